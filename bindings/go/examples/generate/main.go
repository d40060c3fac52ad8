// Command generate samples one image with the Go binding and writes it as a PNG (Go's image/png):
//
//	go run ./examples/generate MODEL PROMPT OUT.png [STEPS [SIZE]]
//
// euler_a, seed 7, guidance 7.5; STEPS 20 and SIZE 512 by default. tools/deb-smoke.sh builds it against the installed
// packages and checks its pixels against lora-sd generate's.
package main

import (
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"strconv"

	"lorasd/lorasd"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		var e *lorasd.Error
		if errors.As(err, &e) {
			fmt.Fprintf(os.Stderr, "generate: %s (status %d)\n", e.Message, e.Status)
		} else {
			fmt.Fprintln(os.Stderr, "generate:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return errors.New("usage: generate MODEL PROMPT OUT.png [STEPS [SIZE]]")
	}
	steps, size := 20, 512
	var err error
	if len(args) > 3 {
		if steps, err = strconv.Atoi(args[3]); err != nil {
			return fmt.Errorf("STEPS %q: %w", args[3], err)
		}
	}
	if len(args) > 4 {
		if size, err = strconv.Atoi(args[4]); err != nil {
			return fmt.Errorf("SIZE %q: %w", args[4], err)
		}
	}
	m, err := lorasd.LoadModel(args[0], &lorasd.ModelOptions{VAEDecodeOnly: true}) // as lora-sd generate: no encoder
	if err != nil {
		return err
	}
	defer m.Close()
	imgs, err := m.Generate(lorasd.SampleOptions{Prompt: args[1], Steps: steps, Sampler: "euler_a", Seed: 7,
		Guidance: 7.5, Width: size, Height: size})
	if err != nil {
		return err
	}
	img := imgs[0]
	out := image.NewNRGBA(image.Rect(0, 0, img.Width, img.Height))
	for i := 0; i < img.Width*img.Height; i++ {
		copy(out.Pix[4*i:4*i+3], img.Pix[3*i:3*i+3])
		out.Pix[4*i+3] = 255
	}
	f, err := os.Create(args[2])
	if err != nil {
		return err
	}
	if err := png.Encode(f, out); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
