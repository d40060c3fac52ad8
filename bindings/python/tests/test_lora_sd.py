"""The Python binding against the C library and its CLI: the same pixels as `lora-sd generate` for a seed, two
training steps, errors with status and message, callbacks that cancel or raise, handles freed in any order.

Run by `make check-python` (LORA_SD_LIBRARY, LORA_SD_CLI and LSD_DATA_DIR point at the build tree)."""
import math
import os
import struct
import subprocess
import tempfile
import unittest
import zlib

import lora_sd

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
TINY = os.path.join(REPO, "tests", "data", "sd-tiny")
CLI = os.environ.get("LORA_SD_CLI", os.path.join(REPO, "build", "lora-sd"))


def read_png_rgb(path):
    """(width, height, RGB bytes) of an 8-bit RGB non-interlaced PNG, decoded here with zlib alone so the reference
    does not go through the library under test."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, color, interlace) == (8, 2, 0), "only RGB8 non-interlaced"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, bpp = zlib.decompress(idat), width * 3, 3
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        ft, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, bytes(out)


def write_png_rgb(path, width, height, rgb):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\0" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def tiny_dataset(folder):
    captions = ["a photo of a cat", "a red car", "two dogs", "a blue house"]
    for i, caption in enumerate(captions):
        w, h = 32 + 8 * i, 32
        write_png_rgb(os.path.join(folder, f"{i}.png"), w, h,
                      bytes(v for y in range(h) for x in range(w) for v in ((6 * x) % 256, y * 4, 200)))
        with open(os.path.join(folder, f"{i}.txt"), "w") as f:
            f.write(caption)
    return folder


class GenerateTest(unittest.TestCase):
    def test_same_pixels_as_the_cli(self):
        args = dict(prompt="a red cube", negative_prompt="blurry", steps=3, sampler="euler_a", seed=7, width=32,
                    height=32, guidance_scale=7.5)
        with tempfile.TemporaryDirectory() as tmp:
            ref = os.path.join(tmp, "ref.png")
            subprocess.run([CLI, "generate", "--model", TINY, "--prompt", args["prompt"], "--negative-prompt",
                            args["negative_prompt"], "--steps", "3", "--sampler", "euler_a", "--seed", "7",
                            "--width", "32", "--height", "32", "--guidance", "7.5", "--output", ref],
                           check=True, capture_output=True)
            w, h, want = read_png_rgb(ref)
        with lora_sd.Model(TINY) as model:
            images = model.generate(**args)
        self.assertEqual(len(images), 1)
        img = images[0]
        self.assertEqual((img.width, img.height, img.channels), (w, h, 3))
        self.assertEqual(img.data, want)
        self.assertGreater(len(set(img.data)), 16, "a real image, not a constant")

    def test_prompt_syntax_reads_weights(self):
        args = dict(steps=2, seed=7, width=32, height=32)
        with lora_sd.Model(TINY) as model:
            plain = model.generate("(red:1.5) cube", **args)[0].data
            a1111 = model.generate("(red:1.5) cube", prompt_syntax="a1111", **args)[0].data
            self.assertNotEqual(plain, a1111, "the weight changes the image")
            self.assertEqual(model.generate("red cube", prompt_syntax="a1111", **args)[0].data,
                             model.generate("red cube", **args)[0].data, "no brackets: the same image in both")

    def test_png_round_trip_and_numpy(self):
        with lora_sd.Model(TINY) as model, tempfile.TemporaryDirectory() as tmp:
            img = model.generate("a tree", steps=2, seed=1, width=32, height=32)[0]
            path = os.path.join(tmp, "x.png")
            img.save_png(path, {"parameters": "a tree"})
            self.assertEqual(read_png_rgb(path), (32, 32, img.data))
            try:
                import numpy  # noqa: F401
            except ImportError:
                return  # numpy is optional; Image.data is the pixels without it
            arr = img.to_numpy()
            self.assertEqual(arr.shape, (32, 32, 3))
            self.assertEqual(arr.tobytes(), img.data)

    def test_model_info(self):
        with lora_sd.Model(TINY) as model:
            info = model.info()
        self.assertEqual((info.latent_channels, info.device, info.name), (4, "cpu", "sd-tiny"))
        self.assertGreater(info.unet_params, 0)

    def test_vae_decode_only(self):
        args = dict(steps=2, seed=7, width=32, height=32)
        with lora_sd.Model(TINY) as whole, lora_sd.Model(TINY, vae_decode_only=True) as dec:
            self.assertEqual(dec.generate("a red cube", **args)[0].data, whole.generate("a red cube", **args)[0].data)
            # the elements of encoder.* and quant_conv.* in sd-tiny/vae/diffusion_pytorch_model.safetensors
            self.assertEqual(whole.info().vae_params - dec.info().vae_params, 65984)


class CallbackTest(unittest.TestCase):
    def setUp(self):
        self.model = lora_sd.Model(TINY)

    def tearDown(self):
        self.model.close()

    def test_progress_reports_every_step(self):
        seen = []
        self.model.generate("x", steps=3, sampler="euler", seed=1, width=32, height=32,
                            progress=lambda p: seen.append(p) and False)
        denoise = [(p.step, p.total) for p in seen if p.stage == 2]
        self.assertEqual(denoise, [(1, 3), (2, 3), (3, 3)])

    def test_progress_returning_true_cancels(self):
        with self.assertRaises(lora_sd.Cancelled) as cm:
            self.model.generate("x", steps=5, seed=1, width=32, height=32, progress=lambda p: p.stage == 2)
        self.assertEqual(cm.exception.status, lora_sd.Status.CANCELLED)
        self.assertIn("cancel", cm.exception.message)

    def test_exception_in_callback_propagates(self):
        class Boom(RuntimeError):
            pass

        def progress(p):
            if p.stage == 2 and p.step == 2:
                raise Boom("stop at step 2")

        with self.assertRaises(Boom) as cm:
            self.model.generate("x", steps=5, seed=1, width=32, height=32, progress=progress)
        self.assertIsInstance(cm.exception.__cause__, lora_sd.Cancelled)
        # the model is still usable afterwards
        self.assertEqual(len(self.model.generate("x", steps=1, seed=1, width=32, height=32)), 1)


class AbiTest(unittest.TestCase):
    def test_struct_declarations_match_the_library(self):
        """Every ctypes struct has the library's size (lsd_struct_size), so a field left out or mistyped shows."""
        import ctypes
        from lora_sd import _native as N
        ids = {2: N.Progress, 3: N.Image, 4: N.ModelParams, 5: N.ModelInfo, 6: N.SampleParams, 7: N.LoraParams,
               8: N.LoadReport, 9: N.AdapterInfo, 12: N.DatasetParams, 14: N.DatasetInfo, 17: N.TrainMetrics,
               18: N.TrainParams}  # lsd_struct_id numbers
        for struct_id, cls in ids.items():
            first = ctypes.c_size_t()
            size = N.struct_size(struct_id, ctypes.byref(first))
            self.assertEqual(ctypes.sizeof(cls), size, cls.__name__)
            self.assertLessEqual(first.value, size)
        self.assertEqual(N.struct_size(99, None), 0)


class ErrorTest(unittest.TestCase):
    def test_missing_model(self):
        with self.assertRaises(lora_sd.Error) as cm:
            lora_sd.Model("/nonexistent/model-dir")
        self.assertEqual(cm.exception.status, lora_sd.Status.NOT_FOUND)
        self.assertIn("/nonexistent/model-dir", cm.exception.message)
        self.assertIn("not found", str(cm.exception))

    def test_bad_argument_names_it(self):
        with lora_sd.Model(TINY) as model:
            with self.assertRaises(lora_sd.Error) as cm:
                model.generate("x", sampler="warp")
            self.assertEqual(cm.exception.status, lora_sd.Status.INVALID_ARGUMENT)
            self.assertIn("'warp'", cm.exception.message)
            with self.assertRaises(lora_sd.Error) as cm:
                model.generate("x", steps=1, width=33, height=32)
            self.assertIn("width = 33 is not a multiple of 8", cm.exception.message)
            with self.assertRaises(lora_sd.Error) as cm:
                model.generate("x", steps=1, width=32, height=32, prompt_syntax="fancy")
            self.assertIn("prompt syntax 'fancy' is not one of plain, a1111", cm.exception.message)
            with self.assertRaises(TypeError):
                lora_sd.AdapterSet(model).add("a", rnak=4)

    def test_closed_handle(self):
        model = lora_sd.Model(TINY)
        with model:
            pass
        with self.assertRaises(ValueError):
            model.info()
        model.close()  # twice is fine


class EmbeddingTest(unittest.TestCase):
    """Textual inversion through the binding: files, a folder and vectors go in; failures keep their status and the
    message naming the file or token (the fixtures: tests/data/embeddings/gen_embeddings.py)."""
    EMB = os.path.join(REPO, "tests", "data", "embeddings")

    def test_files_folder_and_vectors(self):
        with lora_sd.Model(TINY) as model:
            model.load_embedding(os.path.join(self.EMB, "a1111_one.pt"))
            model.load_embedding(os.path.join(self.EMB, "kohya_emb_bf16.safetensors"), token="kw")
            # 7 files load (3 at the top, 2 kohya, diffusers' 2); the 9 of bad/ are skipped, each with a warning
            self.assertEqual(model.load_embeddings_dir(self.EMB), (7, 9))
            model.add_embedding("tok", [[0.5] * 32, [-0.25] * 32])
            model.add_embedding("one", [0.125] * 32)

            wrong = os.path.join(self.EMB, "bad", "wrong_dim.pt")
            with self.assertRaises(lora_sd.Error) as cm:
                model.load_embedding(wrong)
            self.assertEqual(cm.exception.status, lora_sd.Status.SHAPE_MISMATCH)
            self.assertEqual(cm.exception.message,
                             f"{wrong}: lsd_model_add_embedding: 'wrong_dim' has vectors of 24, the text encoder's "
                             "are 32")
            with self.assertRaises(lora_sd.Error) as cm:
                model.add_embedding("tok", [[1.0] * 24])
            self.assertEqual((cm.exception.status, cm.exception.message),
                             (lora_sd.Status.SHAPE_MISMATCH,
                              "lsd_model_add_embedding: 'tok' has vectors of 24, the text encoder's are 32"))
            with self.assertRaises(lora_sd.Error) as cm:
                model.add_embedding("two words", [[1.0] * 32])
            self.assertEqual(cm.exception.status, lora_sd.Status.INVALID_ARGUMENT)
            self.assertIn("token 'two words' holds a space or comma", cm.exception.message)
            with self.assertRaises(ValueError):
                model.add_embedding("ragged", [[1.0] * 32, [1.0] * 31])
            missing = os.path.join(self.EMB, "none")
            with self.assertRaises(lora_sd.Error) as cm:
                model.load_embeddings_dir(missing)
            self.assertEqual(cm.exception.status, lora_sd.Status.NOT_FOUND)
            self.assertIn(missing, cm.exception.message)


class NamesTest(unittest.TestCase):
    def test_long_names_come_back_whole(self):
        """lsd_adapter_info.name holds 127 bytes (here half an "é"); the binding reads the whole name instead."""
        name = "é" * 100 + "-lora"
        with tempfile.TemporaryDirectory() as tmp, lora_sd.Model(TINY) as model:
            link = os.path.join(tmp, "m" * 200)
            os.symlink(TINY, link)
            with lora_sd.Model(link) as long_model:
                self.assertEqual(long_model.info().name, "m" * 200)
            with lora_sd.AdapterSet(model) as adapters:
                adapters.add(name, rank=2)
                self.assertEqual([a.name for a in adapters.adapters()], [name])


class TrainTest(unittest.TestCase):
    def train_two_steps(self, folder, out_dir):
        metrics = []
        with lora_sd.Model(TINY) as model, lora_sd.AdapterSet(model) as adapters, \
                lora_sd.Dataset(folder) as ds:
            self.assertEqual(len(ds), 4)
            with lora_sd.Trainer(model, adapters, "lora", ds, train_batch_size=1, resolution=32,
                                 max_train_steps=2, learning_rate=1e-3, seed=3, lr_scheduler="constant",
                                 output_dir=out_dir, metrics=metrics.append) as tr:
                losses = [tr.step(), tr.step()]
                self.assertEqual(tr.global_step, 2)
                tr.save_lora(os.path.join(out_dir, "lora.safetensors"))
            info = adapters.adapters()
        self.assertEqual([(m.step, m.loss) for m in metrics], [(1, losses[0]), (2, losses[1])])
        self.assertEqual([(a.name, a.rank, a.trainable) for a in info], [("lora", 4, True)])
        return losses

    def test_two_steps_repeat_and_save(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "data"))
            data = tiny_dataset(os.path.join(tmp, "data"))
            a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
            first = self.train_two_steps(data, a)
            self.assertTrue(all(math.isfinite(x) and x > 0 for x in first), first)
            self.assertEqual(self.train_two_steps(data, b), first, "same seed, same losses")
            with lora_sd.Model(TINY) as model, lora_sd.AdapterSet(model) as adapters:
                report = adapters.load("back", os.path.join(a, "lora.safetensors"))
                self.assertEqual(report.unmatched_keys, 0)
                self.assertGreater(report.applied_modules, 0)
                self.assertEqual(adapters.info(0).rank, 4)

    def test_trainer_error(self):
        with lora_sd.Model(TINY) as model, lora_sd.AdapterSet(model) as adapters:
            with self.assertRaises(lora_sd.Error) as cm:
                lora_sd.Trainer(model, adapters, "lora", None, learning_rate=-1)
            self.assertEqual(cm.exception.status, lora_sd.Status.INVALID_ARGUMENT)
            self.assertIn("learning_rate must be > 0", cm.exception.message)


class LycorisTest(unittest.TestCase):
    def test_report_counts_lycoris_modules(self):
        with lora_sd.Model(TINY) as model, lora_sd.AdapterSet(model) as adapters:
            report = adapters.load("dora", os.path.join(REPO, "tests", "data", "lycoris", "dora.safetensors"))
            self.assertEqual((report.applied_modules, report.loha_modules, report.lokr_modules, report.full_modules,
                              report.dora_modules), (5, 1, 1, 0, 5))


class OwnershipTest(unittest.TestCase):
    def test_model_closed_before_its_adapter_set(self):
        model = lora_sd.Model(TINY)
        adapters = lora_sd.AdapterSet(model)
        model.close()
        adapters.add("a", rank=2, targets="attn,ff")
        self.assertEqual(adapters.info(0).rank, 2)
        adapters.close()

    def test_garbage_collector_order(self):
        model = lora_sd.Model(TINY)
        adapters = lora_sd.AdapterSet(model)
        trainer = lora_sd.Trainer(model, adapters, "lora", None, resolution=32)
        del model, adapters  # the trainer still trains on them
        self.assertEqual(trainer.global_step, 0)
        del trainer


if __name__ == "__main__":
    unittest.main()
