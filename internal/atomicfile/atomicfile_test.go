package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.json")
	for _, content := range []string{"first", "second, longer than the first"} {
		t.Run(content, func(t *testing.T) {
			if err := Write(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != content {
				t.Fatalf("read %q, %v; want %q", got, err, content)
			}
			st, _ := os.Stat(path)
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("the directory holds %d files, want only the one written (no temporary left)", len(entries))
			}
		})
	}
	t.Run("a missing directory is an error", func(t *testing.T) {
		if err := Write(filepath.Join(dir, "no", "f"), nil, 0o600); err == nil {
			t.Fatal("wrote into a missing directory")
		}
	})
}
