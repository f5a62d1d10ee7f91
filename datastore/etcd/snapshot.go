package etcd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// SnapshotFile is the file in the state directory that keeps the last
// datastore contents a node listed, so that it can start when etcd cannot
// be reached.
const SnapshotFile = "snapshot.json"

// snapshot is the raw contents of the keys a node reads, at one revision.
type snapshot struct {
	Prefix   string                   `json:"prefix"`
	Revision int64                    `json:"revision"`
	Saved    time.Time                `json:"saved"`
	Entries  map[string]snapshotEntry `json:"entries"`
}

type snapshotEntry struct {
	Value       string `json:"value"`
	ModRevision int64  `json:"modRevision"`
}

// saveSnapshot writes s to dir/snapshot.json atomically: a temporary file,
// synced, renamed over the old one, and the directory synced, so a crash
// leaves the old snapshot or the new one. The directory is made 0700 and
// the file is 0600: it holds the cluster's layout.
func saveSnapshot(dir string, s *snapshot) error {
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding the datastore snapshot: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("datastore snapshot: the state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+SnapshotFile+".*")
	if err != nil {
		return fmt.Errorf("datastore snapshot: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("datastore snapshot: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("datastore snapshot: writing %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("datastore snapshot: syncing %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("datastore snapshot: %w", err)
	}
	path := filepath.Join(dir, SnapshotFile)
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("datastore snapshot: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("datastore snapshot: syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("datastore snapshot: syncing %s: %w", dir, err)
	}
	return nil
}

// loadSnapshot reads dir/snapshot.json; ok is false when there is none.
func loadSnapshot(dir string) (s *snapshot, ok bool, err error) {
	path := filepath.Join(dir, SnapshotFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("datastore snapshot: %w", err)
	}
	s = new(snapshot)
	if err := json.Unmarshal(data, s); err != nil {
		return nil, false, fmt.Errorf("datastore snapshot %s: %w (delete it to start without one)", path, err)
	}
	return s, true, nil
}
