package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Reasons a Problem can have; they label the service's error counter.
const (
	ReasonAuthentication = "authentication_failed"
	ReasonVhostNotFound  = "vhost_not_found"
	ReasonAccessRefused  = "access_refused"
	ReasonPrecondition   = "precondition_failed"
	ReasonResourceLocked = "resource_locked"
	ReasonTLS            = "tls"
)

// ProblemReasons lists every Problem reason, for pre-creating metric series.
var ProblemReasons = []string{
	ReasonAuthentication, ReasonVhostNotFound, ReasonAccessRefused,
	ReasonPrecondition, ReasonResourceLocked, ReasonTLS,
}

// Problem is an error that retrying alone will not fix: the broker refused
// the credentials, the virtual host, a permission or a queue's arguments,
// or the TLS handshake failed verification. The clients keep retrying, since
// credentials and permissions can be fixed while the service runs, but they
// report a Problem as what it is, with what to fix.
type Problem struct {
	// Reason is one of ProblemReasons.
	Reason string
	// Fix says what an operator has to change.
	Fix string
	Err error
}

func (p *Problem) Error() string { return p.Reason + ": " + p.Err.Error() + " (" + p.Fix + ")" }
func (p *Problem) Unwrap() error { return p.Err }

// classify returns the Problem err is, or nil for an error that retrying
// can fix (a broker that is down, restarting or unreachable).
func classify(err error) *Problem {
	if err == nil {
		return nil
	}
	if fix, ok := tlsFailure(err); ok {
		return &Problem{Reason: ReasonTLS, Fix: fix, Err: err}
	}
	if p := classifyAMQP(err); p != nil {
		return p
	}
	var after *closedAfterTLS
	if errors.As(err, &after) {
		return &Problem{Reason: ReasonTLS, Err: err,
			Fix: "the broker closed the connection right after the TLS handshake, which is how it refuses a client certificate: if it requires one, set RABBITMQ_TLS_CERT_FILE and RABBITMQ_TLS_KEY_FILE to a certificate signed by a CA it trusts"}
	}
	return nil
}

// classifyAMQP classifies the broker's own replies.
func classifyAMQP(err error) *Problem {
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return nil
	}
	text := strings.ToLower(ae.Reason)
	switch {
	case ae.Code == amqp.AccessRefused && (!ae.Server || strings.Contains(text, "login")):
		// The library reports a socket the broker closed during the
		// login as this error; RabbitMQ closes it for bad credentials.
		return &Problem{Reason: ReasonAuthentication, Err: err,
			Fix: "the broker refused the user name or password: check RABBITMQ_USER and RABBITMQ_PASS, or the credentials in RABBITMQ_URL or RABBITMQ_URLS"}
	case ae.Code == amqp.NotAllowed && strings.Contains(text, "not found"):
		return &Problem{Reason: ReasonVhostNotFound, Err: err,
			Fix: "the virtual host in the URL does not exist: create it (rabbitmqctl add_vhost) or correct the URL's path"}
	case ae.Code == amqp.NotAllowed && strings.Contains(text, "vhost"):
		return &Problem{Reason: ReasonAccessRefused, Err: err,
			Fix: "the user may not use this virtual host: grant it with rabbitmqctl set_permissions -p VHOST USER"}
	case ae.Code == amqp.AccessRefused:
		return &Problem{Reason: ReasonAccessRefused, Err: err,
			Fix: "the user lacks a permission on a queue the service uses: it needs configure (to declare a missing queue), read (event queue) and write (alert and dead-letter queues); grant them with rabbitmqctl set_permissions"}
	case ae.Code == amqp.PreconditionFailed:
		return &Problem{Reason: ReasonPrecondition, Err: err,
			Fix: "the broker refused an operation's arguments against an existing queue or setting: compare the queue's arguments with the service's configuration"}
	case ae.Code == amqp.ResourceLocked:
		return &Problem{Reason: ReasonResourceLocked, Err: err,
			Fix: "a queue the service uses is exclusive to another connection: declare it without exclusive"}
	}
	return nil
}

// tlsFailure tells a TLS handshake that failed verification, on either
// side, from a network failure, and says what to fix.
func tlsFailure(err error) (string, bool) {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		op       *net.OpError
	)
	switch {
	case errors.As(err, &hostname):
		return "the broker's certificate is not valid for the host name in the URL: use a name the certificate holds, or a certificate for this name", true
	case errors.As(err, &unknown), errors.As(err, &invalid), errors.As(err, &verify):
		return "the broker's certificate was not verified: check that RABBITMQ_TLS_CA_FILE holds the CA that signed it and that it has not expired", true
	case errors.As(err, &record):
		return "the broker did not answer with TLS: use amqps:// only with the broker's TLS port", true
	case errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), "tls"):
		return "the broker refused the TLS handshake (" + op.Err.Error() + "): if it requires a client certificate, set RABBITMQ_TLS_CERT_FILE and RABBITMQ_TLS_KEY_FILE to one its CA signed", true
	}
	return "", false
}
