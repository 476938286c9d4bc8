package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// fileError names which of the TLS files failed, so the error can be
// reported against its variable.
type fileError struct {
	which string // CA_FILE, CERT_FILE or KEY_FILE
	err   error
}

func (e *fileError) Error() string { return e.err.Error() }
func (e *fileError) Unwrap() error { return e.err }

// tlsMaterial is what the files hold.
type tlsMaterial struct {
	roots *x509.CertPool // nil: the system roots
	certs []tls.Certificate
}

// load reads and parses the files that are set.
func (f TLSFiles) load() (tlsMaterial, error) {
	var m tlsMaterial
	var errCA, errCert error
	m.roots, errCA = f.loadCA()
	m.certs, errCert = f.loadCert()
	return m, errors.Join(errCA, errCert)
}

// loadCA reads the CA file; nil roots mean the system roots.
func (f TLSFiles) loadCA() (*x509.CertPool, error) {
	if f.CAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, &fileError{"CA_FILE", fmt.Errorf("read CA file: %w", err)}
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, &fileError{"CA_FILE", fmt.Errorf("CA file %s holds no PEM certificate", f.CAFile)}
	}
	return roots, nil
}

// loadCert reads the client certificate and its key, if set.
func (f TLSFiles) loadCert() ([]tls.Certificate, error) {
	if f.CertFile == "" && f.KeyFile == "" {
		return nil, nil
	}
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, &fileError{"CERT_FILE", errors.New("a client certificate needs both the certificate and the key file")}
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		// The key's contents never appear in this error, only paths and
		// what is wrong.
		return nil, &fileError{"CERT_FILE", fmt.Errorf("load client certificate %s and key %s: %w", f.CertFile, f.KeyFile, err)}
	}
	return []tls.Certificate{cert}, nil
}

// ClientConfig returns a TLS client configuration that verifies the
// server's certificate chain against the CA file (or the system roots) and
// its name against serverName (a host name or IP address), and presents
// the client certificate if one is set. There is no way to turn
// verification off.
func (f TLSFiles) ClientConfig(serverName string) (*tls.Config, error) {
	m, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      m.roots,
		Certificates: m.certs,
		ServerName:   serverName,
	}, nil
}
