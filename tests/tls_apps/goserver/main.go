// goserver: a minimal HTTPS/1.1 server (standard library only) used as a Go
// crypto/tls target by the l7probe tests.
//
//	goserver -addr 127.0.0.1:8443 -cert cert.pem -key key.pem
//
// Routes: /status/<code> answers with that status code, /bytes/<n> answers with
// n bytes of 'x'; anything else answers 200 "ok\n". HTTP/2 is disabled
// (TLSNextProto is an empty map), so every request is HTTP/1.1 over TLS.
// When the listener is ready it prints "listening <addr>" on stdout.
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func handler(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/status/"):
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 100 || code > 999 {
			http.Error(w, "bad status code", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	case strings.HasPrefix(r.URL.Path, "/bytes/"):
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/"))
		if err != nil || n < 0 || n > 64<<20 {
			http.Error(w, "bad byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(bytes.Repeat([]byte("x"), n))
	default:
		w.Write([]byte("ok\n"))
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "listen address")
	cert := flag.String("cert", "cert.pem", "certificate (PEM)")
	key := flag.String("key", "key.pem", "private key (PEM)")
	flag.Parse()

	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("load key pair: %v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	srv := &http.Server{
		Handler:      http.HandlerFunc(handler),
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"http/1.1"}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	fmt.Fprintf(os.Stdout, "listening %s\n", ln.Addr())
	os.Stdout.Sync()
	log.Fatal(srv.Serve(tls.NewListener(ln, srv.TLSConfig)))
}
