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

// Dataset is an lsd_dataset: a folder of captioned images.
type Dataset struct {
	h *C.lsd_dataset
}

// OpenDataset lists dir at the given resolution (0: 512).
func OpenDataset(dir string, resolution int) (*Dataset, error) {
	var p C.lsd_dataset_params
	C.lsd_dataset_params_init(&p)
	if resolution > 0 {
		p.resolution = C.int(resolution)
	}
	cd := C.CString(dir)
	defer C.free(unsafe.Pointer(cd))
	eb := newErrBuf()
	defer eb.free()
	var h *C.lsd_dataset
	if err := eb.err(C.lsdgo_dataset_open(cd, &p, &h, eb.p, eb.cap())); err != nil {
		return nil, err
	}
	d := &Dataset{h}
	runtime.SetFinalizer(d, (*Dataset).Close)
	return d, nil
}

// Len is the number of items.
func (d *Dataset) Len() int {
	defer runtime.KeepAlive(d)
	return int(C.lsd_dataset_size(d.h))
}

// Close drops this handle (twice is fine).
func (d *Dataset) Close() {
	if d.h != nil {
		C.lsd_dataset_free(d.h)
		d.h = nil
	}
}
