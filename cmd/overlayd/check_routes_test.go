package main

import (
	"strings"
	"testing"
)

func TestCheckPrintRoutes(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		want  []string // the commands, in order
		notes []string // comment lines that must be there
	}{
		{
			name: "natOutgoing IP-in-IP on node-c: sysctls, link, routes, the NAT table and its rules",
			args: []string{"--config", "../../examples/nat-outgoing.toml", "--node", "node-c"},
			want: []string{
				"sysctl -w net.ipv6.conf.ovl0.disable_ipv6=1",
				"sysctl -w net.ipv4.conf.ovl0.rp_filter=2",
				"ip link set dev ovl0 mtu 1480 up",
				"ip addr replace 10.1.0.128/32 dev ovl0",
				"ip route replace 10.1.0.0/16 dev ovl0 src 10.1.0.128 proto 211",
				"ip route replace unreachable 10.1.0.128/26 proto 211",
				"ip route replace default dev ovl0 scope link table 211 proto 211",
				"ip rule add priority 31000 from 10.1.0.0/16 to 10.1.0.0/16 lookup main proto 211",
				"ip rule add priority 31001 from 10.1.0.0/16 lookup 211 proto 211",
			},
			notes: []string{"CAP_NET_RAW for IP-in-IP"},
		},
		{
			name: "VXLAN CrossSubnet on node-a with another device: direct routes via node-b",
			args: []string{"--config", "../../examples/vxlan-cross-subnet.toml", "--node", "node-a", "--device", "tun7"},
			want: []string{
				"sysctl -w net.ipv6.conf.tun7.disable_ipv6=1",
				"sysctl -w net.ipv4.conf.tun7.rp_filter=2",
				"ip link set dev tun7 mtu 1450 up",
				"ip addr replace 192.168.0.0/32 dev tun7",
				"ip route replace 192.168.0.0/16 dev tun7 src 192.168.0.0 proto 211",
				"ip route replace unreachable 192.168.0.0/26 proto 211",
				"ip route replace 192.168.0.64/26 via 198.18.1.11 proto 211",
				"ip route replace default dev tun7 scope link table 211 proto 211",
				"ip rule add priority 31000 from 192.168.0.0/16 to 192.168.0.0/16 lookup main proto 211",
				"ip rule add priority 31001 from 192.168.0.0/16 lookup 211 proto 211",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, append([]string{"check", "--print-routes"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var cmds []string
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasPrefix(line, "#") {
					cmds = append(cmds, line)
				}
			}
			if strings.Join(cmds, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(cmds, "\n"), strings.Join(tc.want, "\n"))
			}
			for _, n := range tc.notes {
				if !strings.Contains(out, n) {
					t.Errorf("output lacks %q:\n%s", n, out)
				}
			}
		})
	}
}

func TestRunDeviceFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown tunnel mode", []string{"--tunnel-mode", "kernel"}, `--tunnel-mode "kernel": allowed values are "tun" and "netstack"`},
		{"stdio as the TUN fd", []string{"--tun-fd", "2"}, "--tun-fd 2: 0, 1 and 2 are stdin, stdout and stderr"},
		{"a TUN fd in netstack mode", []string{"--tunnel-mode", "netstack", "--tun-fd", "3"}, "of no use in netstack mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "--config", "../../examples/vxlan-always.toml", "--node", "node-a"}, tc.args...)
			code, _, errOut := run(t, args...)
			if code != exitBadInput || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitBadInput, tc.want)
			}
		})
	}
}
