//go:build linux

package qemutest

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Mode bits of the cpio "newc" format (the kernel's initramfs format).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// archive is an in-memory file tree written out as a newc cpio archive.
// Parent directories are added implicitly and always precede their
// contents, as the kernel's unpacker needs.
type archive struct {
	entries map[string]*entry // by clean path without the leading slash
}

type entry struct {
	mode      uint32 // type and permission bits
	data      []byte // file contents or symlink target
	rdevMajor uint32
	rdevMinor uint32
}

func newArchive() *archive { return &archive{entries: map[string]*entry{}} }

func clean(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// dir adds directory p (and its parents).
func (a *archive) dir(p string) {
	p = clean(p)
	if p == "" {
		return
	}
	if _, ok := a.entries[p]; ok {
		return
	}
	a.dir(path.Dir(p))
	a.entries[p] = &entry{mode: modeDir | 0o755}
}

// file adds a regular file with permission perm.
func (a *archive) file(p string, perm uint32, data []byte) {
	p = clean(p)
	a.dir(path.Dir(p))
	a.entries[p] = &entry{mode: modeFile | perm&0o7777, data: data}
}

// symlink adds p pointing at target.
func (a *archive) symlink(p, target string) {
	p = clean(p)
	a.dir(path.Dir(p))
	a.entries[p] = &entry{mode: modeSymlink | 0o777, data: []byte(target)}
}

// charDev adds a character device node (no privilege needed: it is data).
func (a *archive) charDev(p string, perm, major, minor uint32) {
	p = clean(p)
	a.dir(path.Dir(p))
	a.entries[p] = &entry{mode: modeCharDev | perm&0o7777, rdevMajor: major, rdevMinor: minor}
}

// has reports whether p is in the archive.
func (a *archive) has(p string) bool {
	_, ok := a.entries[clean(p)]
	return ok
}

// writeTo writes the archive in newc format, parents first.
func (a *archive) writeTo(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	// Sorting by depth, then name, puts every directory before its contents.
	sort.Slice(names, func(i, j int) bool {
		di, dj := strings.Count(names[i], "/"), strings.Count(names[j], "/")
		if di != dj {
			return di < dj
		}
		return names[i] < names[j]
	})
	bw := bufio.NewWriter(w)
	ino := uint32(1)
	for _, n := range names {
		e := a.entries[n]
		nlink := uint32(1)
		if e.mode&0o170000 == modeDir {
			nlink = 2
		}
		if err := writeRecord(bw, ino, e.mode, nlink, e.rdevMajor, e.rdevMinor, n, e.data); err != nil {
			return err
		}
		ino++
	}
	if err := writeRecord(bw, 0, 0, 1, 0, 0, "TRAILER!!!", nil); err != nil {
		return err
	}
	return bw.Flush()
}

func writeRecord(w *bufio.Writer, ino, mode, nlink, rmaj, rmin uint32, name string, data []byte) error {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	w.WriteString(hdr)
	w.WriteString(name)
	w.WriteByte(0)
	pad(w, len(hdr)+len(name)+1)
	w.Write(data)
	_, err := w.Write(make([]byte, (4-len(data)%4)%4))
	return err
}

func pad(w *bufio.Writer, n int) {
	for ; n%4 != 0; n++ {
		w.WriteByte(0)
	}
}
