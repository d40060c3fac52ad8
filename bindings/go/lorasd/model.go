package lorasd

/*
#include <stdlib.h>
#include "helpers.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"
)

// Model is an lsd_model: a diffusers folder, a single .safetensors/.ckpt file or a hub id of the local Hugging Face
// cache. Close frees it (a finalizer does otherwise); adapter sets and trainers keep it alive as long as they need
// it, so handles may be closed in any order.
type Model struct {
	h *C.lsd_model
}

// ModelOptions are lsd_model_params; the zero value means the defaults (cpu, f32).
type ModelOptions struct {
	Device   string
	Dtype    string // "f32", "f16", "bf16"
	Progress ProgressFunc
	// VAEDecodeOnly loads the VAE without its encoder (lsd_model_params.vae_decode_only): less memory for
	// text-to-image; encoding, training and saving the model then fail.
	VAEDecodeOnly bool
}

// LoadModel loads a model.
func LoadModel(path string, o *ModelOptions) (*Model, error) {
	var p C.lsd_model_params
	C.lsd_model_params_init(&p)
	var cb *callback
	if o != nil {
		if o.Device != "" {
			p.device = C.CString(o.Device)
			defer C.free(unsafe.Pointer(p.device))
		}
		if o.Dtype != "" {
			name := C.CString(o.Dtype)
			defer C.free(unsafe.Pointer(name))
			eb := newErrBuf()
			defer eb.free()
			if err := eb.err(C.lsdgo_dtype_from_name(name, &p.dtype, eb.p, eb.cap())); err != nil {
				return nil, err
			}
		}
		if o.VAEDecodeOnly {
			p.vae_decode_only = 1
		}
		if cb = newCallback(o.Progress); cb != nil {
			C.lsdgo_set_model_progress(&p, C.uintptr_t(cb.handle))
		}
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	eb := newErrBuf()
	defer eb.free()
	var h *C.lsd_model
	st := C.lsdgo_model_load(cpath, &p, &h, eb.p, eb.cap())
	cb.done()
	if err := eb.err(st); err != nil {
		return nil, err
	}
	m := &Model{h}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close drops this handle (twice is fine).
func (m *Model) Close() {
	if m.h != nil {
		C.lsd_model_free(m.h)
		m.h = nil
	}
}

func (m *Model) fail(st C.lsd_status) error {
	defer runtime.KeepAlive(m)
	return recorded(st, func(s *C.lsd_status, b *C.char, n C.size_t) C.size_t {
		return C.lsd_model_last_error(m.h, s, b, n)
	})
}

// Image is 8-bit RGB, row-major: Pix has Width*Height*3 bytes.
type Image struct {
	Width, Height int
	Pix           []byte
}

// SampleOptions are lsd_sample_params for one prompt; zero fields take the library's defaults.
type SampleOptions struct {
	Prompt, NegativePrompt string
	Steps                  int
	Guidance               float32 // 0: default 7.5
	Sampler                string  // "pndm" (default), "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"
	PromptSyntax           string  // "plain" (default) or "a1111": (word:1.3), [word], BREAK, long prompts
	Seed                   uint64
	Width, Height          int
	Batch                  int
	Progress               ProgressFunc
}

// Generate samples o.Batch images (lsd_sample).
func (m *Model) Generate(o SampleOptions) ([]Image, error) {
	defer runtime.KeepAlive(m)
	var p C.lsd_sample_params
	C.lsd_sample_params_init(&p)
	p.prompt = C.CString(o.Prompt)
	defer C.free(unsafe.Pointer(p.prompt))
	p.negative_prompt = C.CString(o.NegativePrompt)
	defer C.free(unsafe.Pointer(p.negative_prompt))
	if o.Steps > 0 {
		p.steps = C.int(o.Steps)
	}
	if o.Guidance != 0 {
		p.guidance_scale = C.float(o.Guidance)
	}
	if o.Sampler != "" {
		name := C.CString(o.Sampler)
		defer C.free(unsafe.Pointer(name))
		eb := newErrBuf()
		defer eb.free()
		if err := eb.err(C.lsdgo_sampler_from_name(name, &p.sampler, eb.p, eb.cap())); err != nil {
			return nil, err
		}
	}
	if o.PromptSyntax != "" {
		name := C.CString(o.PromptSyntax)
		defer C.free(unsafe.Pointer(name))
		eb := newErrBuf()
		defer eb.free()
		if err := eb.err(C.lsdgo_prompt_syntax_from_name(name, &p.prompt_syntax, eb.p, eb.cap())); err != nil {
			return nil, err
		}
	}
	p.seed = C.uint64_t(o.Seed)
	if o.Width > 0 {
		p.width = C.int(o.Width)
	}
	if o.Height > 0 {
		p.height = C.int(o.Height)
	}
	batch := 1
	if o.Batch > 1 {
		batch = o.Batch
		// prompts NULL with batch > 1 is refused: one prompt for every image
		prompts := (*[1 << 20]*C.char)(C.malloc(C.size_t(batch) * C.size_t(unsafe.Sizeof(p.prompt))))
		negatives := (*[1 << 20]*C.char)(C.malloc(C.size_t(batch) * C.size_t(unsafe.Sizeof(p.prompt))))
		defer C.free(unsafe.Pointer(prompts))
		defer C.free(unsafe.Pointer(negatives))
		for i := 0; i < batch; i++ {
			prompts[i], negatives[i] = p.prompt, p.negative_prompt
		}
		p.prompts = &prompts[0]
		p.negative_prompts = &negatives[0]
	}
	p.batch = C.int(batch)
	cb := newCallback(o.Progress)
	if cb != nil {
		C.lsdgo_set_sample_progress(&p, C.uintptr_t(cb.handle))
	}
	imgs := (*[1 << 20]C.lsd_image)(C.calloc(C.size_t(batch), C.size_t(unsafe.Sizeof(C.lsd_image{}))))
	defer C.free(unsafe.Pointer(imgs))
	for i := 0; i < batch; i++ {
		imgs[i].struct_size = C.size_t(unsafe.Sizeof(C.lsd_image{}))
	}
	st := C.lsd_sample_n(m.h, &p, &imgs[0], C.size_t(batch), nil, 0)
	cb.done()
	if st != C.LSD_OK {
		return nil, m.fail(st)
	}
	out := make([]Image, batch)
	for i := range out {
		img := &imgs[i]
		out[i] = Image{int(img.width), int(img.height),
			C.GoBytes(unsafe.Pointer(img.data), img.width*img.height*img.channels)}
		C.lsd_image_release(img)
	}
	return out, nil
}

// Tokenize returns the model's token ids of text (max_tokens of them).
func (m *Model) Tokenize(text string, maxIDs int) ([]int64, error) {
	defer runtime.KeepAlive(m)
	ct := C.CString(text)
	defer C.free(unsafe.Pointer(ct))
	ids := make([]int64, maxIDs+1)
	st := C.lsd_model_tokenize(m.h, ct, (*C.int64_t)(unsafe.Pointer(&ids[0])), C.int(maxIDs), nil)
	if st != C.LSD_OK {
		return nil, m.fail(st)
	}
	return ids[:maxIDs], nil
}

// AddEmbedding is textual inversion (lsd_model_add_embedding): token (one word) then stands in prompts for vectors,
// rows of the model's context_dim floats. They are copied; adding a token again replaces it.
func (m *Model) AddEmbedding(token string, vectors [][]float32) error {
	defer runtime.KeepAlive(m)
	dim := 0
	if len(vectors) > 0 {
		dim = len(vectors[0])
	}
	flat := make([]float32, 0, len(vectors)*dim+1)
	for i, row := range vectors {
		if len(row) != dim {
			return fmt.Errorf("lorasd: AddEmbedding %q: row %d has %d floats, row 0 has %d", token, i, len(row), dim)
		}
		flat = append(flat, row...)
	}
	flat = append(flat, 0) // never a nil pointer: no rows is the library's error to name
	ct := C.CString(token)
	defer C.free(unsafe.Pointer(ct))
	st := C.lsd_model_add_embedding(m.h, ct, (*C.float)(unsafe.Pointer(&flat[0])), C.int(len(vectors)), C.int(dim))
	return m.fail(st)
}

// LoadEmbedding reads a textual-inversion file (A1111 .pt, kohya, diffusers learned_embeds; lsd_model_load_embedding).
// token "" means the library's rule: the file's stem, or the token stored in diffusers' learned_embeds.*.
func (m *Model) LoadEmbedding(path, token string) error {
	defer runtime.KeepAlive(m)
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var ct *C.char
	if token != "" {
		ct = C.CString(token)
		defer C.free(unsafe.Pointer(ct))
	}
	return m.fail(C.lsd_model_load_embedding(m.h, cp, ct))
}

// LoadEmbeddingsDir loads every embedding file below dir as A1111's embeddings folder does
// (lsd_model_load_embeddings_dir): a file that does not load is skipped with a warning to the log callback.
func (m *Model) LoadEmbeddingsDir(dir string) (loaded, skipped int, err error) {
	defer runtime.KeepAlive(m)
	cd := C.CString(dir)
	defer C.free(unsafe.Pointer(cd))
	var l, s C.int
	if err := m.fail(C.lsd_model_load_embeddings_dir(m.h, cd, &l, &s)); err != nil {
		return 0, 0, err
	}
	return int(l), int(s), nil
}
