package lorasd

/*
#include <stdlib.h>
#include "helpers.h"
*/
import "C"

import (
	"math"
	"runtime"
	"unsafe"
)

// AdapterSet is an lsd_adapter_set: named LoRA adapters on a model (which it keeps alive).
type AdapterSet struct {
	h *C.lsd_adapter_set
}

// NewAdapterSet makes an empty set on m.
func NewAdapterSet(m *Model) (*AdapterSet, error) {
	defer runtime.KeepAlive(m)
	var h *C.lsd_adapter_set
	if st := C.lsd_adapter_set_new(m.h, &h); st != C.LSD_OK {
		return nil, m.fail(st)
	}
	s := &AdapterSet{h}
	runtime.SetFinalizer(s, (*AdapterSet).Close)
	return s, nil
}

// Close drops this handle (twice is fine).
func (s *AdapterSet) Close() {
	if s.h != nil {
		C.lsd_adapter_set_free(s.h)
		s.h = nil
	}
}

func (s *AdapterSet) fail(st C.lsd_status) error {
	defer runtime.KeepAlive(s)
	return recorded(st, func(rs *C.lsd_status, b *C.char, n C.size_t) C.size_t {
		return C.lsd_adapter_set_last_error(s.h, rs, b, n)
	})
}

// Add makes a trainable adapter of the given rank on the UNet's attention layers.
func (s *AdapterSet) Add(name string, rank int, seed uint64) error {
	defer runtime.KeepAlive(s)
	var p C.lsd_lora_params
	C.lsd_lora_params_init(&p)
	p.rank = C.int(rank)
	p.seed = C.uint64_t(seed)
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	return s.fail(C.lsd_adapter_set_add(s.h, cn, &p))
}

// Load reads a LoRA file (kohya, PEFT, diffusers) as adapter name with the given weight.
func (s *AdapterSet) Load(name, path string, weight float32) error {
	defer runtime.KeepAlive(s)
	var p C.lsd_lora_params
	C.lsd_lora_params_init(&p)
	p.weight = C.float(weight)
	p.te_weight = C.float(math.NaN())
	cn, cp := C.CString(name), C.CString(path)
	defer C.free(unsafe.Pointer(cn))
	defer C.free(unsafe.Pointer(cp))
	return s.fail(C.lsd_adapter_set_load(s.h, cn, cp, &p, nil))
}

// Remove drops adapter name.
func (s *AdapterSet) Remove(name string) error {
	defer runtime.KeepAlive(s)
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	return s.fail(C.lsd_adapter_set_remove(s.h, cn))
}

// AdapterInfo is lsd_adapter_info.
type AdapterInfo struct {
	Name      string
	Rank      int
	Alpha     float32
	Modules   int
	Trainable bool
}

// Adapters lists the set's adapters.
func (s *AdapterSet) Adapters() ([]AdapterInfo, error) {
	defer runtime.KeepAlive(s)
	n := int(C.lsd_adapter_set_count(s.h))
	out := make([]AdapterInfo, n)
	for i := range out {
		var ai C.lsd_adapter_info
		ai.struct_size = C.size_t(unsafe.Sizeof(ai))
		if st := C.lsd_adapter_set_get_info(s.h, C.int(i), &ai); st != C.LSD_OK {
			return nil, s.fail(st)
		}
		// the whole name: ai.name holds its first 127 bytes
		var name *C.char
		if st := C.lsd_adapter_set_get_name(s.h, C.int(i), &name); st != C.LSD_OK {
			return nil, s.fail(st)
		}
		out[i] = AdapterInfo{C.GoString(name), int(ai.rank), float32(ai.alpha), int(ai.modules), ai.trainable != 0}
	}
	return out, nil
}
