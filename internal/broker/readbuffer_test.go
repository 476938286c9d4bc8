package broker

import (
	"io"
	"net"
	"testing"
	"time"
)

// A buffered connection hands over what has arrived at once: it never
// waits for its buffer to fill, so a lone heartbeat or delivery is not
// held back.
func TestReadBufferedReturnsWhatHasArrived(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer server.Close()
	c := newReadBuffered(client)
	defer c.Close()

	go func() { _, _ = server.Write([]byte("frame")) }()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "frame" {
		t.Fatalf("Read = %q, %v; want \"frame\"", buf[:n], err)
	}

	// Deadlines are the connection's own.
	if err := c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); err == nil || !isTimeout(err) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}

	server.Close()
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("Read after the peer closed: %v, want EOF", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
