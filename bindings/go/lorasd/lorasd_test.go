package lorasd

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var tiny = filepath.Join("..", "..", "..", "tests", "data", "sd-tiny")

func cli() string {
	if p := os.Getenv("LORA_SD_CLI"); p != "" {
		return p
	}
	return filepath.Join("..", "..", "..", "build", "lora-sd")
}

func load(t *testing.T) *Model {
	t.Helper()
	m, err := LoadModel(tiny, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rgb decodes a PNG with Go's image/png: the reference pixels come from outside the library.
func rgb(t *testing.T, path string) (int, int, []byte) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	out := make([]byte, 0, b.Dx()*b.Dy()*3)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			out = append(out, c.R, c.G, c.B)
		}
	}
	return b.Dx(), b.Dy(), out
}

func TestGenerateMatchesCLI(t *testing.T) {
	ref := filepath.Join(t.TempDir(), "ref.png")
	out, err := exec.Command(cli(), "generate", "--model", tiny, "--prompt", "a red cube", "--negative-prompt",
		"blurry", "--steps", "3", "--sampler", "euler_a", "--seed", "7", "--width", "32", "--height", "32",
		"--guidance", "7.5", "--output", ref).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	w, h, want := rgb(t, ref)
	m := load(t)
	defer m.Close()
	imgs, err := m.Generate(SampleOptions{Prompt: "a red cube", NegativePrompt: "blurry", Steps: 3, Sampler: "euler_a",
		Seed: 7, Width: 32, Height: 32, Guidance: 7.5})
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Width != w || imgs[0].Height != h {
		t.Fatalf("got %d images of %dx%d, want 1 of %dx%d", len(imgs), imgs[0].Width, imgs[0].Height, w, h)
	}
	if string(imgs[0].Pix) != string(want) {
		t.Fatal("pixels differ from lora-sd generate's")
	}
}

func TestProgressCancelsAndPanicsPropagate(t *testing.T) {
	m := load(t)
	defer m.Close()
	var steps []int
	_, err := m.Generate(SampleOptions{Prompt: "x", Steps: 3, Sampler: "euler", Width: 32, Height: 32,
		Progress: func(p Progress) bool {
			if p.Stage == StageDenoise {
				steps = append(steps, p.Step)
			}
			return false
		}})
	if err != nil || fmt.Sprint(steps) != "[1 2 3]" {
		t.Fatalf("err %v, denoise steps %v", err, steps)
	}
	_, err = m.Generate(SampleOptions{Prompt: "x", Steps: 5, Width: 32, Height: 32,
		Progress: func(p Progress) bool { return p.Stage == StageDenoise }})
	var e *Error
	if !errors.As(err, &e) || e.Status != Cancelled || !strings.Contains(e.Message, "cancel") {
		t.Fatalf("want a Cancelled *Error, got %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "boom at step 2" {
				t.Fatalf("recovered %v", r)
			}
		}()
		m.Generate(SampleOptions{Prompt: "x", Steps: 5, Sampler: "euler", Width: 32, Height: 32,
			Progress: func(p Progress) bool {
				if p.Stage == StageDenoise && p.Step == 2 {
					panic("boom at step 2")
				}
				return false
			}})
		t.Fatal("the callback's panic did not come out of Generate")
	}()
}

func TestErrors(t *testing.T) {
	_, err := LoadModel("/nonexistent/model-dir", nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != NotFound || !strings.Contains(e.Message, "/nonexistent/model-dir") {
		t.Fatalf("got %v", err)
	}
	m := load(t)
	defer m.Close()
	_, err = m.Generate(SampleOptions{Prompt: "x", Sampler: "warp"})
	if !errors.As(err, &e) || e.Status != InvalidArgument || !strings.Contains(e.Message, "'warp'") {
		t.Fatalf("got %v", err)
	}
	_, err = m.Generate(SampleOptions{Prompt: "x", PromptSyntax: "fancy"})
	if !errors.As(err, &e) || e.Status != InvalidArgument ||
		!strings.Contains(e.Message, "prompt syntax 'fancy' is not one of plain, a1111") {
		t.Fatalf("got %v", err)
	}
	_, err = m.Generate(SampleOptions{Prompt: "x", Steps: 1, Width: 33, Height: 32})
	if !errors.As(err, &e) || !strings.Contains(e.Message, "width = 33 is not a multiple of 8") {
		t.Fatalf("got %v", err)
	}
	if got := err.Error(); !strings.HasPrefix(got, "lora_sd: lsd_sample: width = 33") ||
		!strings.HasSuffix(got, "(invalid argument)") {
		t.Fatalf("Error() = %q", got)
	}
}

// TestEmbeddings loads textual-inversion files, a folder and vectors (fixtures:
// tests/data/embeddings/gen_embeddings.py) and checks that failures keep their status and the message naming the
// file or token.
func TestEmbeddings(t *testing.T) {
	emb := filepath.Join("..", "..", "..", "tests", "data", "embeddings")
	m := load(t)
	defer m.Close()
	if err := m.LoadEmbedding(filepath.Join(emb, "a1111_one.pt"), ""); err != nil {
		t.Fatal(err)
	}
	if err := m.LoadEmbedding(filepath.Join(emb, "kohya_emb_bf16.safetensors"), "kw"); err != nil {
		t.Fatal(err)
	}
	// 7 files load (3 at the top, 2 kohya, diffusers' 2); the 9 of bad/ are skipped, each with a warning
	if loaded, skipped, err := m.LoadEmbeddingsDir(emb); err != nil || loaded != 7 || skipped != 9 {
		t.Fatalf("loaded %d, skipped %d, %v", loaded, skipped, err)
	}
	row := func(v float32, n int) []float32 {
		r := make([]float32, n)
		for i := range r {
			r[i] = v
		}
		return r
	}
	if err := m.AddEmbedding("tok", [][]float32{row(0.5, 32), row(-0.25, 32)}); err != nil {
		t.Fatal(err)
	}

	var e *Error
	wrong := filepath.Join(emb, "bad", "wrong_dim.pt")
	err := m.LoadEmbedding(wrong, "")
	want := wrong + ": lsd_model_add_embedding: 'wrong_dim' has vectors of 24, the text encoder's are 32"
	if !errors.As(err, &e) || e.Status != ShapeMismatch || e.Message != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	err = m.AddEmbedding("tok", [][]float32{row(1, 24)})
	want = "lsd_model_add_embedding: 'tok' has vectors of 24, the text encoder's are 32"
	if !errors.As(err, &e) || e.Status != ShapeMismatch || e.Message != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	err = m.AddEmbedding("none", nil)
	if !errors.As(err, &e) || e.Status != InvalidArgument || !strings.Contains(e.Message, "'none' has 0 vectors") {
		t.Fatalf("got %v", err)
	}
	if err = m.AddEmbedding("ragged", [][]float32{row(1, 32), row(1, 31)}); err == nil || errors.As(err, &e) {
		t.Fatalf("ragged rows: got %v, want the binding's own error", err)
	}
	missing := filepath.Join(emb, "none")
	_, _, err = m.LoadEmbeddingsDir(missing)
	if !errors.As(err, &e) || e.Status != NotFound || !strings.Contains(e.Message, missing) {
		t.Fatalf("got %v", err)
	}
}

// TestLongAdapterName: lsd_adapter_info.name holds 127 bytes (here half an "é"); Adapters gives the whole name.
func TestLongAdapterName(t *testing.T) {
	m := load(t)
	defer m.Close()
	set, err := NewAdapterSet(m)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	name := strings.Repeat("é", 100) + "-lora"
	if err := set.Add(name, 2, 1); err != nil {
		t.Fatal(err)
	}
	got, err := set.Adapters()
	if err != nil || len(got) != 1 || got[0].Name != name {
		t.Fatalf("got %+v, %v", got, err)
	}
}

// brokenModel is sd-tiny without the VAE's weights in a folder of its own: loading it fails after ~0.1 s of work
// (long enough for the Go scheduler to move the goroutine to another OS thread) with a message naming the folder.
func brokenModel(t *testing.T, dir string) string {
	abs, _ := filepath.Abs(tiny)
	entries, err := os.ReadDir(abs)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "vae"), 0o755)
	for _, e := range entries {
		if e.Name() != "vae" {
			os.Symlink(filepath.Join(abs, e.Name()), filepath.Join(dir, e.Name()))
		}
	}
	os.Symlink(filepath.Join(abs, "vae", "config.json"), filepath.Join(dir, "vae", "config.json"))
	return dir
}

// The case: goroutines failing at once, each reading its own message although a goroutine's next cgo call
// may run on another OS thread (a binding reading lsd_last_error in a second cgo call fails this test).
func TestErrorsFromManyGoroutines(t *testing.T) {
	const n, rounds = 16, 4
	models := make([]*Model, n)
	for g := range models {
		models[g] = load(t)
		defer models[g].Close()
	}
	tmp := t.TempDir()
	// Goroutines busy in Go keep every P taken, so a goroutine returning from C often has to wait for one and then
	// resumes on whichever OS thread has it.
	stop := make(chan struct{})
	defer close(stop)
	for i := 0; i < runtime.GOMAXPROCS(0); i++ {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
					runtime.Gosched()
				}
			}
		}()
	}
	var wg sync.WaitGroup
	bad := make(chan string, n*rounds*2)
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			dir := brokenModel(t, filepath.Join(tmp, fmt.Sprintf("g%d", g)))
			for r := 0; r < rounds; r++ {
				if _, err := LoadModel(dir, nil); err == nil || !strings.Contains(err.Error(), dir+"/vae/") {
					bad <- fmt.Sprintf("goroutine %d load: %v", g, err)
				}
				k := 1 + g*4 + r%4
				_, err := models[g].Tokenize("x", k)
				want := fmt.Sprintf("lsd_model_tokenize: max_ids %d is less than max_tokens 77", k)
				var e *Error
				if !errors.As(err, &e) || e.Message != want {
					bad <- fmt.Sprintf("goroutine %d: %v", g, err)
				}
			}
		}(g)
	}
	wg.Wait()
	close(bad)
	count := 0
	for s := range bad {
		if count++; count <= 3 {
			t.Error(s)
		}
	}
	if count > 0 {
		t.Fatalf("%d of %d messages were not the goroutine's own", count, n*rounds*2)
	}
}

func tinyDataset(t *testing.T) string {
	dir := t.TempDir()
	for i, caption := range []string{"a photo of a cat", "a red car", "two dogs", "a blue house"} {
		w, h := 32+8*i, 32
		img := image.NewNRGBA(image.Rect(0, 0, w, h))
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				img.Set(x, y, color.NRGBA{uint8(6 * x), uint8(4 * y), 200, 255})
			}
		}
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%d.png", i)))
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(f, img); err != nil {
			t.Fatal(err)
		}
		f.Close()
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.txt", i)), []byte(caption), 0o644)
	}
	return dir
}

func trainTwoSteps(t *testing.T, data, lora string) []float32 {
	m := load(t)
	set, err := NewAdapterSet(m)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := OpenDataset(data, 32)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(m, set, "lora", ds, TrainOptions{LearningRate: 1e-3, MaxTrainSteps: 2, TrainBatchSize: 1,
		Resolution: 32, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	// The caller's handles go first: the trainer keeps what it trains on.
	m.Close()
	ds.Close()
	var losses []float32
	for k := 0; k < 2; k++ {
		loss, err := tr.Step()
		if err != nil {
			t.Fatal(err)
		}
		losses = append(losses, loss)
	}
	if tr.GlobalStep() != 2 {
		t.Fatalf("global step %d", tr.GlobalStep())
	}
	if err := tr.SaveLoRA(lora); err != nil {
		t.Fatal(err)
	}
	tr.Close()
	set.Close()
	return losses
}

func TestTrainTwoSteps(t *testing.T) {
	data := tinyDataset(t)
	dir := t.TempDir()
	a := trainTwoSteps(t, data, filepath.Join(dir, "a.safetensors"))
	b := trainTwoSteps(t, data, filepath.Join(dir, "b.safetensors"))
	for k := range a {
		if !(a[k] > 0) || math.IsInf(float64(a[k]), 0) || a[k] != b[k] {
			t.Fatalf("losses %v then %v: want finite, positive and the same for one seed", a, b)
		}
	}
	m := load(t)
	defer m.Close()
	set, err := NewAdapterSet(m)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if err := set.Load("back", filepath.Join(dir, "a.safetensors"), 1); err != nil {
		t.Fatal(err)
	}
	info, err := set.Adapters()
	if err != nil || len(info) != 1 || info[0].Name != "back" || info[0].Rank != 4 || info[0].Modules == 0 {
		t.Fatalf("%v %+v", err, info)
	}
	err = set.Remove("nope")
	var e *Error
	if !errors.As(err, &e) || e.Status != NotFound || e.Message != `lsd_adapter_set_remove: no adapter named "nope" in the set` {
		t.Fatalf("got %v", err)
	}
}

func TestVAEDecodeOnly(t *testing.T) {
	whole := load(t)
	defer whole.Close()
	dec, err := LoadModel(tiny, &ModelOptions{VAEDecodeOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	o := SampleOptions{Prompt: "a red cube", Steps: 3, Sampler: "euler_a", Seed: 7, Width: 32, Height: 32}
	a, errA := whole.Generate(o)
	b, errB := dec.Generate(o)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if string(a[0].Pix) != string(b[0].Pix) {
		t.Fatal("decode-only pixels differ from the whole VAE's")
	}
	set, err := NewAdapterSet(dec)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	_, err = NewTrainer(dec, set, "lora", nil, TrainOptions{LearningRate: 1e-3, MaxTrainSteps: 1, TrainBatchSize: 1,
		Resolution: 32, Rank: 2})
	if err == nil || !strings.Contains(err.Error(), "lsd_trainer_new: needs the VAE encoder") ||
		!strings.Contains(err.Error(), "vae_decode_only") {
		t.Fatalf("trainer on a decode-only model: %v", err)
	}
}
