package lorasd

/*
#include "helpers.h"
*/
import "C"

import (
	"runtime/cgo"
	"time"
)

// Stage is lsd_stage: what a progress report counts.
type Stage int

const (
	StageLoad       Stage = 0
	StageEncode     Stage = 1
	StageDenoise    Stage = 2
	StageDecode     Stage = 3
	StageTrainStep  Stage = 4
	StageCheckpoint Stage = 5
)

// Progress is one report: Step of Total steps of Stage done (1-based).
type Progress struct {
	Stage   Stage
	Step    int
	Total   int
	Elapsed time.Duration
}

// ProgressFunc receives progress; returning true cancels the call (which then fails with Status Cancelled).
type ProgressFunc func(Progress) bool

// callback carries a ProgressFunc through the library as a cgo.Handle, and a panic raised inside it back to the
// goroutine that made the call.
type callback struct {
	fn       ProgressFunc
	panicked interface{}
	handle   cgo.Handle
}

func newCallback(fn ProgressFunc) *callback {
	if fn == nil {
		return nil
	}
	cb := &callback{fn: fn}
	cb.handle = cgo.NewHandle(cb)
	return cb
}

// done releases the handle and re-raises a panic of the callback in the caller's goroutine.
func (cb *callback) done() {
	if cb == nil {
		return
	}
	cb.handle.Delete()
	if cb.panicked != nil {
		panic(cb.panicked)
	}
}

//export lsdgoProgress
func lsdgoProgress(p *C.lsd_progress, user C.uintptr_t) (cancel C.int) {
	cb := cgo.Handle(user).Value().(*callback)
	if cb.panicked != nil {
		return 1
	}
	defer func() {
		if r := recover(); r != nil {
			cb.panicked = r
			cancel = 1
		}
	}()
	if cb.fn(Progress{Stage(p.stage), int(p.step), int(p.total), time.Duration(float64(p.elapsed_seconds) * 1e9)}) {
		return 1
	}
	return 0
}
