// Package chaos is the fault-injection suite (make chaos). It runs the
// service binary against private rabbitmq-server and redis-server
// processes, publishes events with planted attacks and hostile messages,
// breaks the broker or Redis while the service works, and checks that no
// alert and no event was lost, copies of an alert are identical, dead
// letters are exactly the hostile messages, and the metrics count each
// event once.
//
// The suite is behind the chaos build tag, so go test ./... does not run
// it: go test -tags chaos ./internal/chaos/ does.
package chaos
