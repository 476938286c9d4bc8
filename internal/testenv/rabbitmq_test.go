package testenv_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func TestPrivateRabbitMQNode(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	node := testenv.StartRabbitMQ(t, testenv.RabbitMQOptions{TLS: pki, VerifyPeer: true})
	if node.Port == 5672 || node.TLSPort == 5671 {
		t.Fatalf("private node on a shared port: %d, %d", node.Port, node.TLSPort)
	}
	queue := testenv.Name(t, "q")

	t.Run("publishes and consumes over plain AMQP", func(t *testing.T) {
		conn := dial(t, node.URL())
		roundTrip(t, conn, queue, "plain")
	})

	t.Run("publishes and consumes over TLS with a client certificate", func(t *testing.T) {
		conn, err := amqp.DialTLS(node.TLSURL(), clientTLS(t, pki, true))
		if err != nil {
			t.Fatalf("dial TLS: %v", err)
		}
		defer conn.Close()
		roundTrip(t, conn, queue, "tls")
	})

	t.Run("refuses a TLS client without a certificate", func(t *testing.T) {
		conn, err := amqp.DialTLS(node.TLSURL(), clientTLS(t, pki, false))
		if err == nil {
			conn.Close()
			t.Fatal("the node accepted a TLS client without a certificate")
		}
	})

	t.Run("stop_app drops connections and start_app takes them again", func(t *testing.T) {
		conn := dial(t, node.URL())
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		node.StopApp()
		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			t.Fatal("connection still open after stop_app")
		}
		if c, err := amqp.Dial(node.URL()); err == nil {
			c.Close()
			t.Fatal("a connection opened while the application was stopped")
		}
		node.StartApp()
		roundTrip(t, dial(t, node.URL()), queue, "after restart")
	})

	t.Run("close_all_connections closes a client's connection", func(t *testing.T) {
		conn := dial(t, node.URL())
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		node.CloseAllConnections()
		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			t.Fatal("connection still open after close_all_connections")
		}
	})

	t.Run("the memory alarm blocks a publisher until it is cleared", func(t *testing.T) {
		conn := dial(t, node.URL())
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("channel: %v", err)
		}
		// A connection is blocked at its first publish after the alarm.
		node.SetMemoryAlarm(true)
		t.Cleanup(func() { _, _ = node.Ctl("set_vm_memory_high_watermark", "0.4") })
		waitBlocking(t, ch, blocked, queue, true)
		node.SetMemoryAlarm(false)
		waitBlocking(t, ch, blocked, queue, false)
	})
}

func TestPrivateRabbitMQCluster(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartRabbitMQCluster(t, 3)
	queue := testenv.Name(t, "quorum")
	conn := dial(t, cluster.Nodes[1].URL())
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatalf("declare quorum queue: %v", err)
	}
	leader, members, err := cluster.QuorumMembers(queue)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range cluster.Nodes {
		names = append(names, n.Name)
	}
	slices.Sort(names)
	slices.Sort(members)
	if !slices.Equal(names, members) {
		t.Fatalf("quorum queue members %v, want every node %v", members, names)
	}

	roundTrip(t, conn, queue, "before")
	killed := cluster.KillQuorumLeader(queue)
	if killed != leader {
		t.Fatalf("killed %s, the leader was %s", killed.Name, leader.Name)
	}
	// The two nodes left elect a new leader and keep serving the queue.
	var survivor *testenv.RabbitMQ
	for _, n := range cluster.Nodes {
		if n != killed {
			survivor = n
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		newLeader, _, err := cluster.QuorumMembers(queue)
		if err == nil && newLeader != killed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new leader after killing %s: %v", killed.Name, err)
		}
		time.Sleep(time.Second)
	}
	roundTrip(t, dial(t, survivor.URL()), queue, "after the leader died")
}

func dial(t *testing.T, url string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// roundTrip publishes body to queue (declared durable if missing) with a
// confirm and gets it back.
func roundTrip(t *testing.T, conn *amqp.Connection, queue, body string) {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil {
		if ch, err = conn.Channel(); err != nil {
			t.Fatalf("channel: %v", err)
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			t.Fatalf("declare: %v", err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm mode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp.Publishing{Body: []byte(body)})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish not confirmed: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if ok {
			if string(msg.Body) != body {
				t.Fatalf("got %q, want %q", msg.Body, body)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q never arrived", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitBlocking publishes until the broker reports the connection blocked
// (or unblocked) as wanted.
func waitBlocking(t *testing.T, ch *amqp.Channel, notes <-chan amqp.Blocking, queue string, want bool) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		_ = ch.PublishWithContext(context.Background(), "", queue, false, false, amqp.Publishing{Body: []byte("x")})
		select {
		case b := <-notes:
			if b.Active == want {
				return
			}
		case <-deadline:
			t.Fatalf("connection never reported blocked=%v", want)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func clientTLS(t *testing.T, pki *testenv.PKI, withCert bool) *tls.Config {
	t.Helper()
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if withCert {
		cert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}
