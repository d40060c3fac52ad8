// Package lorasd is the Go binding of liblora_sd: Stable Diffusion 1.x sampling and LoRA training (cgo).
//
// cgo finds the header and the library with pkg-config (lora_sd.pc, from liblora-sd-dev or `make install`); for a
// build tree or another prefix, point PKG_CONFIG_PATH at its .pc (see docs/go.md). Every failure is an *Error carrying the library's status and message; the message is
// read in the same C call or from the handle's own record (lsd_model_last_error & co.), never from the thread-local
// lsd_last_error in a second cgo call, which may run on another OS thread.
package lorasd

/*
#cgo pkg-config: lora_sd
#include <stdlib.h>
#include "helpers.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Status is lsd_status (pinned numbers).
type Status int

const (
	OK              Status = 0
	InvalidArgument Status = 1
	IO              Status = 2
	Format          Status = 3
	Unsupported     Status = 4
	ShapeMismatch   Status = 5
	OutOfMemory     Status = 6
	Device          Status = 7
	Cancelled       Status = 8
	NotFound        Status = 9
	Numeric         Status = 10
	Internal        Status = 11
)

func (s Status) String() string { return C.GoString(C.lsd_status_string(C.lsd_status(s))) }

// Error is a failed call: its status and the library's message naming the file, key or argument at fault.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("lora_sd: %s (%s)", e.Message, e.Status) }

const errCap = 8192

// errBuf is room for a message copied by a C helper in the call that failed.
type errBuf struct{ p *C.char }

func newErrBuf() errBuf        { return errBuf{(*C.char)(C.calloc(errCap, 1))} }
func (b errBuf) free()         { C.free(unsafe.Pointer(b.p)) }
func (b errBuf) cap() C.size_t { return errCap }

func (b errBuf) err(st C.lsd_status) error {
	if st == C.LSD_OK {
		return nil
	}
	return &Error{Status(st), C.GoString(b.p)}
}

// recorded reads a failure from a handle's record (the read functions take the handle and a buffer).
func recorded(st C.lsd_status, read func(status *C.lsd_status, buf *C.char, n C.size_t) C.size_t) error {
	if st == C.LSD_OK {
		return nil
	}
	n := read(nil, nil, 0)
	buf := (*C.char)(C.malloc(n + 1))
	defer C.free(unsafe.Pointer(buf))
	var rst C.lsd_status
	read(&rst, buf, n+1)
	return &Error{Status(st), C.GoString(buf)}
}

// Version is the library's version string.
func Version() string { return C.GoString(C.lsd_version_string()) }
