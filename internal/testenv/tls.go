package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a certificate authority of the test's own with a server
// certificate for localhost (127.0.0.1 and ::1 too) and a client
// certificate, all written as PEM files into one directory.
type PKI struct {
	Dir string
	// CAFile signs ServerCert and ClientCert.
	CAFile string
	// ServerCert and ServerKey are valid for localhost, 127.0.0.1 and ::1.
	ServerCert, ServerKey string
	// ClientCert and ClientKey are a client certificate (CN "client").
	ClientCert, ClientKey string
	// OtherCAFile is a second CA that signed nothing here: a client that
	// trusts only it must refuse the server.
	OtherCAFile string
	// WrongNameCert and WrongNameKey are signed by CAFile for the name
	// "elsewhere.invalid" only: a client checking names must refuse them.
	WrongNameCert, WrongNameKey string
}

// NewPKI makes a PKI in a temporary directory. The files are readable by
// every user, so a broker started as another user can read them too.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("pki: %v", err)
	}
	p := &PKI{Dir: dir}
	ca, caKey := newCert(t, nil, nil, "test CA", true, nil, nil)
	p.CAFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)
	other, _ := newCert(t, nil, nil, "other CA", true, nil, nil)
	p.OtherCAFile = writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw)

	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	srv, srvKey := newCert(t, ca, caKey, "localhost", false, []string{"localhost"}, ips)
	p.ServerCert = writePEM(t, dir, "server.pem", "CERTIFICATE", srv.Raw)
	p.ServerKey = writeKey(t, dir, "server-key.pem", srvKey)
	cl, clKey := newCert(t, ca, caKey, "client", false, nil, nil)
	p.ClientCert = writePEM(t, dir, "client.pem", "CERTIFICATE", cl.Raw)
	p.ClientKey = writeKey(t, dir, "client-key.pem", clKey)
	wrong, wrongKey := newCert(t, ca, caKey, "elsewhere.invalid", false, []string{"elsewhere.invalid"}, nil)
	p.WrongNameCert = writePEM(t, dir, "wrong-name.pem", "CERTIFICATE", wrong.Raw)
	p.WrongNameKey = writeKey(t, dir, "wrong-name-key.pem", wrongKey)
	return p
}

// newCert makes a certificate signed by parent (self-signed when nil).
func newCert(t testing.TB, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool,
	dns []string, ips []net.IP) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"audit-log-analysis tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if isCA {
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	return cert, key
}

func writeKey(t testing.TB, dir, name string, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	return writePEM(t, dir, name, "PRIVATE KEY", der)
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("pki: %v", err)
	}
	return path
}
