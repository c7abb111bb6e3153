package idempotency

import (
	"bufio"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// A covered body larger than SpoolThreshold that is not JSON or a form is
// written to a spool file as it is read, while its fingerprint is computed
// in the same pass, and its owner's request goes upstream from that file.
// The file lives as long as the request: Handle removes it on every path.

const (
	// SpoolThreshold is the largest covered body held in memory, in bytes;
	// a larger one (other than JSON and urlencoded forms, see MaxParsedBody)
	// is spooled to Config.SpoolDir.
	SpoolThreshold = 1 << 20
	// MaxParsedBody is the largest JSON or application/x-www-form-urlencoded
	// body, in bytes after its Content-Encoding is decoded: such bodies are
	// parsed and canonicalized in memory, so a larger one gets 413
	// request_too_large even when MaxBody allows more.
	MaxParsedBody = 32 << 20
	// spoolPrefix and spoolSuffix frame the name of every spool file, so a
	// sweep removes nothing else that may share the directory.
	spoolPrefix = "upload-"
	spoolSuffix = ".spool"
	// spoolBufferSize is each spooled upload's write buffer, in bytes.
	spoolBufferSize = 64 << 10
)

// DefaultSpoolDir is Config.SpoolDir's default: caddy-idempotency-spool-<uid>
// under the system's temporary directory (TMPDIR on Unix), one per user, as
// the directory is its creator's alone (0700); caddy-idempotency-spool
// where there are no user ids (Windows). The Caddy module's default is in
// Caddy's data directory instead.
func DefaultSpoolDir() string {
	name := "caddy-idempotency-spool"
	if uid := os.Getuid(); uid >= 0 {
		name += "-" + strconv.Itoa(uid)
	}
	return filepath.Join(os.TempDir(), name)
}

// liveSpools holds the paths of the spool files this process has open, which
// a sweep leaves alone: handlers of two configurations (a reload) share a
// directory, and the new one sweeps it while the old one still serves.
var liveSpools sync.Map

// spoolError is a spool file that could not be created or written (a full
// disk, a directory that is missing or not writable): 503, nothing went
// upstream.
type spoolError struct{ err error }

func (e *spoolError) Error() string { return "idempotency: spool: " + e.err.Error() }
func (e *spoolError) Unwrap() error { return e.err }

// prepareSpoolDir creates dir (0700) if it is missing and removes the spool
// files in it that no handler of this process has open: those of a process
// that ended mid-upload. It returns how many it removed.
func prepareSpoolDir(dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(name, spoolPrefix) || !strings.HasSuffix(name, spoolSuffix) {
			continue
		}
		path := filepath.Join(dir, name)
		if _, live := liveSpools.Load(path); live {
			continue
		}
		// An open file of another process sharing the directory goes on
		// where unlinking an open file is allowed (Unix): its upload, which
		// reads through the open file, still completes.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// spoolFile is one body on disk: written through w as it is read, then
// read back for its fingerprint (when its length was not known in advance)
// and by the owner's trip upstream.
type spoolFile struct {
	f    *os.File
	w    *bufio.Writer
	size int64 // bytes written, once finished
}

var spoolBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, spoolBufferSize) }}

// createSpool creates an empty spool file in dir; an error is a *spoolError.
func createSpool(dir string) (*spoolFile, error) {
	f, err := os.CreateTemp(dir, spoolPrefix+"*"+spoolSuffix)
	if errors.Is(err, fs.ErrNotExist) { // removed since the handler started (a tmp cleaner)
		if err = os.MkdirAll(dir, 0o700); err == nil {
			f, err = os.CreateTemp(dir, spoolPrefix+"*"+spoolSuffix)
		}
	}
	if err != nil {
		return nil, &spoolError{err}
	}
	liveSpools.Store(f.Name(), struct{}{})
	w := spoolBuffers.Get().(*bufio.Writer)
	w.Reset(f)
	return &spoolFile{f: f, w: w}, nil
}

// finish flushes what is buffered, once the whole body is written, and
// records its size; an error is a *spoolError.
func (s *spoolFile) finish(size int64) error {
	err := s.w.Flush()
	s.w.Reset(nil)
	spoolBuffers.Put(s.w)
	s.w = nil
	if err != nil {
		return &spoolError{err}
	}
	s.size = size
	return nil
}

// reader reads the finished file from its start, each time anew: it reads
// at offsets (pread), so it may run while another reads too. Closing it
// leaves the file open: remove closes it.
func (s *spoolFile) reader() io.ReadCloser {
	return io.NopCloser(io.NewSectionReader(s.f, 0, s.size))
}

// remove closes and deletes the file; it may be called more than once.
func (s *spoolFile) remove() {
	if s == nil || s.f == nil {
		return
	}
	if s.w != nil {
		s.w.Reset(nil)
		spoolBuffers.Put(s.w)
		s.w = nil
	}
	name := s.f.Name()
	_ = s.f.Close()
	_ = os.Remove(name)
	liveSpools.Delete(name)
	s.f = nil
}
