package broker

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

func TestTLSConnectionsAreVerifiedBothWays(t *testing.T) {
	t.Parallel()
	pki := testenv.NewPKI(t)
	// One node requires a client certificate; the other presents a
	// certificate for another name.
	strict := testenv.LaunchRabbitMQ(t, testenv.RabbitMQOptions{TLS: pki, VerifyPeer: true})
	misnamed := *pki
	misnamed.ServerCert, misnamed.ServerKey = pki.WrongNameCert, pki.WrongNameKey
	elsewhere := testenv.LaunchRabbitMQ(t, testenv.RabbitMQOptions{TLS: &misnamed})
	strict.WaitReady()
	elsewhere.WaitReady()

	withClientCert := config.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	tests := []struct {
		name   string
		url    string
		files  config.TLSFiles
		reason string // "" for a connection that must succeed
	}{
		{"the right CA and a client certificate connect", strict.TLSURL(), withClientCert, ""},
		{"an IP address in the URL is checked against the certificate's too",
			"amqps://guest:guest@127.0.0.1:" + strconv.Itoa(strict.TLSPort) + "/", withClientCert, ""},
		{"no client certificate is refused by the broker", strict.TLSURL(), config.TLSFiles{CAFile: pki.CAFile}, ReasonTLS},
		{"a broker signed by another CA is refused",
			strict.TLSURL(), config.TLSFiles{CAFile: pki.OtherCAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, ReasonTLS},
		{"a certificate for another name is refused", elsewhere.TLSURL(), config.TLSFiles{CAFile: pki.CAFile}, ReasonTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			counted := 0
			q := testenv.Name(t, "alerts")
			p := newTestPublisher(t, PublisherConfig{URLs: []string{tt.url}, TLS: tt.files.ClientConfig, Queues: []string{q},
				OnError: func(string) { mu.Lock(); counted++; mu.Unlock() }})
			runPublisher(t, p)
			if tt.reason == "" {
				waitFor(t, 30*time.Second, "publisher ready over TLS", p.Connected)
				if err := p.Publish(context.Background(), []Message{{Queue: q, MessageID: "m", Body: []byte("{}")}}); err != nil {
					t.Errorf("Publish over TLS: %v", err)
				}
				return
			}
			waitFor(t, 30*time.Second, "a TLS problem", func() bool { return p.Problem() != nil })
			if got := p.Problem(); got.Reason != tt.reason {
				t.Errorf("problem %v, want reason %s", got, tt.reason)
			}
			mu.Lock()
			defer mu.Unlock()
			if counted == 0 {
				t.Error("the problem was not counted")
			}
			t.Logf("reported: %v", p.Problem())
			if p.Connected() {
				t.Error("connected despite the failed verification")
			}
		})
	}

	t.Run("a consumer reads over TLS", func(t *testing.T) {
		t.Parallel()
		q := testenv.Name(t, "q")
		conn, err := amqp.Dial(strict.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp.Publishing{MessageId: "m", Body: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
		rec := newRecorder()
		c, err := NewConsumer(ConsumerConfig{URLs: []string{strict.TLSURL()}, TLS: withClientCert.ClientConfig, Queue: q, Prefetch: 5,
			Logger: testLogger(t), Backoff: fastBackoff})
		if err != nil {
			t.Fatal(err)
		}
		runConsumer(t, c, rec)
		waitFor(t, 30*time.Second, "the message consumed over TLS", func() bool { return rec.count("m") == 1 })
	})
}
