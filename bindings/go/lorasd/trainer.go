package lorasd

/*
#include <stdlib.h>
#include "helpers.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Trainer is an lsd_trainer: it trains one adapter of a set on a dataset, keeping model, set and dataset alive.
type Trainer struct {
	h  *C.lsd_trainer
	cb *callback // called on every step: lives as long as the trainer
}

// TrainOptions are the lsd_train_params most runs set; zero fields take the library's defaults.
type TrainOptions struct {
	LearningRate   float64
	MaxTrainSteps  int
	TrainBatchSize int
	Resolution     int
	Rank           int
	Seed           uint64
	OutputDir      string
	Progress       ProgressFunc // after every step; true cancels the step under way
}

// NewTrainer trains adapter name of set (added with o.Rank when missing); ds may be nil.
func NewTrainer(m *Model, set *AdapterSet, name string, ds *Dataset, o TrainOptions) (*Trainer, error) {
	defer runtime.KeepAlive(m)
	defer runtime.KeepAlive(set)
	defer runtime.KeepAlive(ds)
	var p C.lsd_train_params
	C.lsd_train_params_init(&p)
	if o.LearningRate != 0 {
		p.learning_rate = C.double(o.LearningRate)
	}
	if o.MaxTrainSteps > 0 {
		p.max_train_steps = C.int(o.MaxTrainSteps)
	}
	if o.TrainBatchSize > 0 {
		p.train_batch_size = C.int(o.TrainBatchSize)
	}
	if o.Resolution > 0 {
		p.resolution = C.int(o.Resolution)
	}
	if o.Rank > 0 {
		p.rank = C.int(o.Rank)
	}
	p.seed = C.uint64_t(o.Seed)
	if o.OutputDir != "" {
		p.output_dir = C.CString(o.OutputDir)
		defer C.free(unsafe.Pointer(p.output_dir))
	}
	t := &Trainer{cb: newCallback(o.Progress)}
	if t.cb != nil {
		C.lsdgo_set_train_progress(&p, C.uintptr_t(t.cb.handle))
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var dh *C.lsd_dataset
	if ds != nil {
		dh = ds.h
	}
	if st := C.lsd_trainer_new(m.h, set.h, cn, dh, &p, &t.h); st != C.LSD_OK {
		t.cb.done()
		return nil, m.fail(st) // lsd_trainer_new records its failure on the model (and set, dataset)
	}
	runtime.SetFinalizer(t, (*Trainer).Close)
	return t, nil
}

func (t *Trainer) fail(st C.lsd_status) error {
	defer runtime.KeepAlive(t)
	if t.cb != nil && t.cb.panicked != nil {
		p := t.cb.panicked
		t.cb.panicked = nil
		panic(p)
	}
	return recorded(st, func(rs *C.lsd_status, b *C.char, n C.size_t) C.size_t {
		return C.lsd_trainer_last_error(t.h, rs, b, n)
	})
}

// Step runs one optimizer step on the dataset and returns its mean loss.
func (t *Trainer) Step() (float32, error) {
	var loss C.float
	if err := t.fail(C.lsd_trainer_step(t.h, &loss)); err != nil {
		return 0, err
	}
	return float32(loss), nil
}

// GlobalStep is the number of optimizer steps done.
func (t *Trainer) GlobalStep() int {
	defer runtime.KeepAlive(t)
	return int(C.lsd_trainer_get_step(t.h))
}

// SaveLoRA writes the adapter in kohya's format.
func (t *Trainer) SaveLoRA(path string) error {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	return t.fail(C.lsd_trainer_save_lora(t.h, cp, C.LSD_LORA_FORMAT_KOHYA))
}

// Close frees the trainer (twice is fine).
func (t *Trainer) Close() {
	if t.h != nil {
		C.lsd_trainer_free(t.h)
		t.h = nil
	}
	if t.cb != nil {
		t.cb.handle.Delete()
		t.cb = nil
	}
}
