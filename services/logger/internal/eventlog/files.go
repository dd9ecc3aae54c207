package eventlog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// current is the file being written; rotated files are
// events-<UTC time>.log, which sort by age.
const current = "events.log"

// Files writes lines to dir/events.log and, when it would grow past
// maxBytes, renames it to events-<time>.log and starts a new one, keeping
// at most maxFiles rotated files. It is not safe for concurrent use.
type Files struct {
	dir      string
	maxBytes int64
	maxFiles int
	f        *os.File
	w        *bufio.Writer
	size     int64
}

// OpenFiles opens (or creates) dir/events.log for appending.
func OpenFiles(dir string, maxBytes int64, maxFiles int) (*Files, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	fs := &Files{dir: dir, maxBytes: maxBytes, maxFiles: maxFiles}
	if err := fs.open(); err != nil {
		return nil, err
	}
	return fs, nil
}

func (fs *Files) open() error {
	f, err := os.OpenFile(filepath.Join(fs.dir, current), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open event log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat event log: %w", err)
	}
	fs.f, fs.size = f, st.Size()
	fs.w = bufio.NewWriterSize(f, 256<<10)
	return nil
}

// WriteLine appends l and a newline, rotating first if l would not fit.
func (fs *Files) WriteLine(l []byte) error {
	if fs.size > 0 && fs.size+int64(len(l))+1 > fs.maxBytes {
		if err := fs.rotate(); err != nil {
			return err
		}
	}
	n, err := fs.w.Write(l)
	fs.size += int64(n)
	if err == nil {
		err = fs.w.WriteByte('\n')
		fs.size++
	}
	if err != nil {
		return fmt.Errorf("write event log: %w", err)
	}
	return nil
}

// Flush writes buffered lines to the file.
func (fs *Files) Flush() error {
	if err := fs.w.Flush(); err != nil {
		return fmt.Errorf("flush event log: %w", err)
	}
	return nil
}

// Close flushes and closes the file.
func (fs *Files) Close() error {
	return errors.Join(fs.Flush(), fs.f.Close())
}

func (fs *Files) rotate() error {
	if err := fs.Close(); err != nil {
		return err
	}
	name := "events-" + time.Now().UTC().Format("20060102T150405.000000000Z") + ".log"
	if err := os.Rename(filepath.Join(fs.dir, current), filepath.Join(fs.dir, name)); err != nil {
		return fmt.Errorf("rotate event log: %w", err)
	}
	rotated, err := rotatedFiles(fs.dir)
	if err != nil {
		return err
	}
	for len(rotated) > fs.maxFiles {
		if err := os.Remove(rotated[0]); err != nil {
			return fmt.Errorf("remove old event log: %w", err)
		}
		rotated = rotated[1:]
	}
	return fs.open()
}

// rotatedFiles lists dir's rotated logs, oldest first.
func rotatedFiles(dir string) ([]string, error) {
	names, err := filepath.Glob(filepath.Join(dir, "events-*.log"))
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// Recent is what LoadRecent read back from the logs.
type Recent struct {
	// Records are the last records, oldest first.
	Records []Record
	// Before holds, for each namespace, the position of its last record
	// among the lines read that are older than Records.
	Before bus.Cursor
	// Floor is the oldest offset among all the lines read, "" when none
	// has a position: what the logger remembers of the record starts there.
	Floor string
}

// LoadRecent reads the last n records of the logs in dir, oldest first:
// the current file, then rotated ones as far back as needed. A line that
// does not parse (a crash mid-write) is skipped. Of the older lines of the
// files it read, it keeps each namespace's last position.
func LoadRecent(dir string, n int, streamOf StreamOf) (Recent, error) {
	rotated, err := rotatedFiles(dir)
	if err != nil {
		return Recent{}, err
	}
	files := append(rotated, filepath.Join(dir, current))
	var chunks [][]Record // newest file first
	total := 0
	for i := len(files) - 1; i >= 0 && total < n; i-- {
		recs, err := readFile(files[i])
		if err != nil {
			return Recent{}, err
		}
		chunks = append(chunks, recs)
		total += len(recs)
	}
	var all []Record
	for i := len(chunks) - 1; i >= 0; i-- {
		all = append(all, chunks[i]...)
	}
	cut := max(len(all)-n, 0)
	r := Recent{Records: all[cut:], Before: bus.Cursor{}}
	for i := range all {
		rec := &all[i]
		if !rec.Position.IsZero() {
			rec.Stream = streamOf(rec.Channel)
			if i < cut {
				r.Before[rec.Stream] = rec.Position
			}
			if r.Floor == "" || CompareOffsets(rec.Position.Offset, r.Floor) < 0 {
				r.Floor = rec.Position.Offset
			}
		}
	}
	clear(all[:cut]) // keep only the records returned alive
	return r, nil
}

func readFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read event log: %w", err)
	}
	defer f.Close()
	var recs []Record
	r := bufio.NewReaderSize(f, 256<<10)
	for {
		l, err := r.ReadBytes('\n')
		if l = bytes.TrimSuffix(l, []byte("\n")); len(l) > 0 && err == nil {
			if rec, perr := Parse(l); perr == nil {
				recs = append(recs, rec)
			}
		}
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", strings.TrimPrefix(path, "./"), err)
		}
	}
}
