package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/overlayd/overlayd/plan"
)

// applySysctls writes each sysctl that differs. An optional one that
// cannot be set (no IPv6 in the kernel) is passed over.
func applySysctls(want []plan.Sysctl) (Changes, error) {
	var (
		ch   Changes
		errs []error
	)
	for _, s := range want {
		file := filepath.Join("/proc/sys", s.File)
		if cur, err := os.ReadFile(file); err == nil && string(bytes.TrimSpace(cur)) == s.Value {
			continue
		}
		err := os.WriteFile(file, []byte(s.Value), 0)
		switch {
		case err == nil:
			ch = append(ch, Change{Object: ObjectSysctl, Op: OpSet, What: s.Key + "=" + s.Value})
		case s.Optional:
		default:
			errs = append(errs, fmt.Errorf("sysctl -w %s=%s (%s): %w", s.Key, s.Value, s.Why, err))
		}
	}
	return ch, errors.Join(errs...)
}
