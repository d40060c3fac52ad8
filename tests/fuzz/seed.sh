#!/bin/sh
# Builds the seed corpus of fuzz target $1 in directory $2 from the test data and the committed image seeds.
set -e
t=$1; out=$2; d=tests/data
mkdir -p "$out"
case $t in
fuzz_safetensors)
    for f in $d/sd-tiny/ref/lora_kohya.safetensors $d/sd-tiny/ref/lora_bad_shape.safetensors \
             $d/sd-tiny/ref/lora_no_match.safetensors $d/sd-tiny/ref/vae.safetensors; do cp "$f" "$out/"; done ;;
fuzz_ckpt|fuzz_zip)
    cp $d/sd-tiny-sf/single-file/bad/* "$out/"
    cp $d/sd-tiny/vae/diffusion_pytorch_model.bin "$out/vae.bin" ;;
fuzz_pickle)
    for f in $d/sd-tiny-sf/single-file/bad/evil_*.ckpt $d/sd-tiny/vae/diffusion_pytorch_model.bin; do
        unzip -p "$f" '*/data.pkl' > "$out/$(basename "$f").pkl" 2>/dev/null || true
    done ;;
fuzz_config)
    for f in $d/sd-tiny/unet/config.json $d/sd-tiny/vae/config.json $d/sd-tiny/text_encoder/config.json \
             data/configs/sd-v1-4/unet/config.json; do cp "$f" "$out/$(echo "$f" | tr / _)"; done ;;
fuzz_tokenizer)
    printf 'a photo of an astronaut riding a horse' > "$out/p1"
    printf '(masterpiece:1.2), <lora:x:0.5> İstanbul caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\xef\xb8\x8f 3.14' > "$out/p2"
    printf 'bad \xff\xfe utf8 \xc3' > "$out/p3" ;;
fuzz_prompt)
    printf 'a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).' > "$out/p1"
    printf 'masterpiece, (best quality:1.2), [[lowres]] BREAK \\(literal\\] (x: -0.5 ) :1.2) caf\xc3\xa9' > "$out/p2"
    printf '((a [b) c] BREAK\xe3\x80\x80BREAK \xff (d:1.2.3' > "$out/p3"
    printf 'cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat cat, (sks:1.2) cat-dog dog, cat BREAK sks' > "$out/p4" ;;
fuzz_lora)
    for f in lora_kohya lora_kohya_sgm lora_peft lora_diffusers lora_attnprocs lora2_kohya lora_locon_tucker \
             lora_bad_shape lora_no_match; do cp $d/sd-tiny/ref/$f.safetensors "$out/"; done
    for f in loha lokr full dora loha_unknown_module loha_unknown_kind; do
        cp $d/lycoris/$f.safetensors "$out/lycoris_$f.safetensors"
    done ;;
fuzz_dataset)
    # first byte: the file (0 metadata.jsonl, 1 caption, 2 kohya folder name, 3 image) and caption options
    printf '\000{"file_name": "a.png", "text": "a cat"}\n' > "$out/meta"
    printf '\004{"file_name": "a.png", "text": ["a cat, sitting", "a dog"]}\n{"file_name": "b.png"}\n' > "$out/meta_list"
    printf '\015\357\273\277tag1, tag2, tag3, tag4\nsecond line' > "$out/caption_bom"
    printf '\045bad \377 utf8' > "$out/caption_bad"
    printf '\00210_sks dog' > "$out/kohya"
    printf '\003' > "$out/img" && cat tests/fuzz/seeds/image/* | head -c 4096 >> "$out/img" ;;
fuzz_latent_file)
    printf '\001\000\010\377\000\100\000' > "$out/overlay"
    printf '\000\010\000\000\000\000\000\000\000{}' > "$out/raw" ;;
fuzz_embedding_file)
    for f in $d/embeddings/*.pt $d/embeddings/*.safetensors $d/embeddings/diffusers/* $d/embeddings/bad/*; do
        cp "$f" "$out/$(echo "${f#$d/embeddings/}" | tr / _)"
    done ;;
fuzz_image)
    cp tests/fuzz/seeds/image/* "$out/" ;;
esac
