// Package datastore holds the sources of a cluster: where the pools, the
// nodes and their blocks come from. The file source reads the cluster file
// (the default: one file, the same on every node); the etcd source
// (package datastore/etcd) reads and writes them in Calico's etcdv3 layout
// (package datastore/calico). Both yield a *config.Cluster for the same
// pipeline: plan, apply, swap.
package datastore

import (
	"context"
	"time"

	"github.com/overlayd/overlayd/config"
)

// Source yields the cluster this node runs on.
type Source interface {
	// Load returns the cluster as the source has it now. For the file it
	// reads and validates the file again; etcd also registers this node
	// and claims its blocks the first time.
	Load(ctx context.Context) (*config.Cluster, error)
	// Watch calls apply with each new cluster until ctx ends or the source
	// fails for good, and never concurrently. A source with nothing to
	// watch (the file: SIGHUP reloads it) returns when ctx ends.
	Watch(ctx context.Context, apply func(*config.Cluster)) error
	// Status says how the source is doing, for metrics and `overlayd
	// status`.
	Status() Status
	// Close releases the source's connections; the cluster stays.
	Close() error
}

// Status is a source's health.
type Status struct {
	Type string `json:"type"` // config.DatastoreFile or config.DatastoreEtcd
	// Up says whether the datastore answers; Since is when Up last changed.
	Up    bool      `json:"up"`
	Since time.Time `json:"since"`
	// Revision is the datastore revision the cluster is at (etcd).
	Revision int64 `json:"revision,omitempty"`
	// Skipped counts entries skipped as malformed since start.
	Skipped uint64 `json:"skipped"`
	// LastError is why the datastore is down, or the last entry skipped.
	LastError string `json:"lastError,omitempty"`
}

// File is the cluster file as a source.
type File struct {
	Path    string
	started time.Time
}

// NewFile makes the file source.
func NewFile(path string) *File { return &File{Path: path, started: time.Now()} }

// Load reads and validates the file.
func (f *File) Load(context.Context) (*config.Cluster, error) { return config.Load(f.Path) }

// Watch waits for ctx: the file changes only when someone says so (SIGHUP,
// `overlayd reload`).
func (f *File) Watch(ctx context.Context, _ func(*config.Cluster)) error {
	<-ctx.Done()
	return nil
}

// Status is always up: the file is read when asked.
func (f *File) Status() Status {
	return Status{Type: config.DatastoreFile, Up: true, Since: f.started}
}

// Close does nothing.
func (f *File) Close() error { return nil }
