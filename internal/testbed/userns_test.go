package testbed

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestUserNSHost(t *testing.T) {
	RequireUserNS(t)
	b := NewForTest(t, Options{})
	plain, err := b.AddHost("plain")
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.AddUserNSHost("rootless")
	if err != nil {
		t.Fatal(err)
	}
	// The bed reaches into it from outside like into any host.
	if err := b.Link(Endpoint{Host: plain, Iface: "eth0"}, Endpoint{Host: h, Iface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	inside := StartOptions{InUserNS: true}
	tests := []struct {
		name    string
		args    []string
		wantOK  bool
		wantOut string
	}{
		{"root inside", []string{"id", "-u"}, true, "0"},
		{"the user namespace maps root to nobody", []string{"cat", "/proc/self/uid_map"}, true, "0      65534          1"},
		{"its own network namespace", []string{"ip", "-o", "link", "show", "eth0"}, true, "eth0"},
		{"CAP_NET_ADMIN over it", []string{"ip", "link", "set", "eth0", "mtu", "1400"}, true, ""},
		{"no way into a namespace the machine's user namespace owns", []string{"ip", "-n", plain.NS, "link", "show"}, false, "Operation not permitted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := h.RunWith(ctx, inside, tc.args[0], tc.args[1:]...)
			if (err == nil) != tc.wantOK {
				t.Fatalf("err = %v, want success %t; output:\n%s", err, tc.wantOK, out)
			}
			if !strings.Contains(string(out), tc.wantOut) {
				t.Errorf("output %q, want it to contain %q", out, tc.wantOut)
			}
		})
	}
}

func TestUserNSHostIsRemovedOnClose(t *testing.T) {
	RequireUserNS(t)
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := b.AddUserNSHost("rootless")
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	p, err := h.StartWith(StartOptions{InUserNS: true}, "sleep", "30")
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if namespaceExists(h.NS) {
		t.Errorf("namespace %s outlived Close", h.NS)
	}
	select {
	case <-p.Exited():
	default:
		t.Errorf("%s outlived Close", p)
	}
}
