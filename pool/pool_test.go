package pool

import (
	"strings"
	"testing"
)

func TestNewDefaults(t *testing.T) {
	p, err := New(Spec{Name: "default-ipv4-ippool", CIDR: "192.168.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	if p.IPIPMode != ModeNever || p.VXLANMode != ModeNever {
		t.Errorf("modes = %q/%q, want Never/Never", p.IPIPMode, p.VXLANMode)
	}
	if p.BlockSize != DefaultBlockSize {
		t.Errorf("blockSize = %d, want %d", p.BlockSize, DefaultBlockSize)
	}
	if got := p.NodeSelector.String(); !strings.Contains(got, "all()") {
		t.Errorf("nodeSelector = %q, want all()", got)
	}
	if p.NATOutgoing || p.Disabled {
		t.Errorf("natOutgoing/disabled default to false, got %v/%v", p.NATOutgoing, p.Disabled)
	}
	if !p.NodeSelector.Matches(map[string]string{}) {
		t.Error("the default selector must select a node without labels")
	}
}
