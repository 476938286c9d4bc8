// Package scale holds the tests that run the service binary as several
// processes: three replicas on one queue and one Redis, one of them killed
// mid-run, and two replicas consuming events a consistent-hash exchange
// shards over four queues. Both check that the alerts are exactly those of
// a single replica and of replay over the same events, so that adding
// replicas or queues changes how fast the events are handled, never what
// they raise.
package scale
