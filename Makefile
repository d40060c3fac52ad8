# liblora_sd — plain make build. `make`, `make check`, `make bench`, `make install PREFIX=...`.
# meson.build builds the same things.

VERSION_MAJOR := 0
VERSION := 0.1.0
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share/lora_sd
MANDIR ?= $(PREFIX)/share/man
B ?= build

CC ?= cc
CXX ?= c++
TORCH_INC ?= /usr/include/torch/csrc/api/include
TORCH_LIBS ?= -ltorch -ltorch_cpu -lc10
PKGS := libpng libturbojpeg libwebp libcjson libutf8proc libzip zlib libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS))
# The CLI alone draws loss.png (cairo) and checksums TensorBoard records (ISA-L's CRC-32C); the library needs neither.
CLI_PKGS := cairo libisal
CLI_CFLAGS := $(shell pkg-config --cflags $(CLI_PKGS))
CLI_LIBS := $(shell pkg-config --libs $(CLI_PKGS))

WARN := -Wall -Wextra -Werror
# Messages are deliberately cut to their buffers; gcc's truncation guesses are noise here (clang lacks the flag).
ifeq ($(findstring clang,$(shell $(CC) --version 2>/dev/null)),)
WARN += -Wno-format-truncation
endif
OPT ?= -O2 -g
SAN :=
ifeq ($(SANITIZE),1)
SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
ifeq ($(SANITIZE),thread)
SAN := -fsanitize=thread -fno-omit-frame-pointer
endif
COMMON := $(OPT) $(WARN) $(SAN) -fPIC -fvisibility=hidden -Iinclude -Ilib -Ishim
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(COMMON) $(PKG_CFLAGS) -DLSD_DATADIR='"$(DATADIR)"' $(CPPFLAGS) $(CFLAGS)
# gcc's flow analysis misfires inside libtorch's c10::optional headers (clang has neither the noise nor the flag).
CXXWARN := $(if $(findstring clang,$(shell $(CXX) --version 2>/dev/null)),,-Wno-maybe-uninitialized)
CXXFLAGS_ALL := -std=c++17 $(COMMON) $(addprefix -isystem ,$(TORCH_INC)) -Wno-unused-parameter $(CXXWARN) $(CPPFLAGS) $(CXXFLAGS)
LIBS_ALL := $(PKG_LIBS) $(TORCH_LIBS) -lpthread -lm -ldl

LIB_SRCS := $(sort $(wildcard lib/*/*.c))
SHIM_SRCS := $(sort $(wildcard shim/*.cpp))
TEST_SRCS := $(sort $(wildcard tests/*.c))
CLI_SRCS := $(sort $(wildcard examples/lora-sd/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/%.o) $(SHIM_SRCS:%.cpp=$(B)/%.o)
TEST_OBJS := $(TEST_SRCS:%.c=$(B)/%.o)
CLI_OBJS := $(CLI_SRCS:%.c=$(B)/%.o)

SONAME := liblora_sd.so.$(VERSION_MAJOR)
SHARED := $(B)/liblora_sd.so.$(VERSION)
STATIC := $(B)/liblora_sd.a

all: $(SHARED) $(STATIC) $(B)/lora-sd $(B)/run-tests $(B)/lora_sd.pc

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(B)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) -MMD -MP -c $< -o $@

$(SHARED): $(LIB_OBJS) lib/lora_sd.map
	$(CXX) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/lora_sd.map -Wl,--no-undefined \
	    $(SAN) $(LDFLAGS) -o $@ $(LIB_OBJS) $(LIBS_ALL)
	ln -sf liblora_sd.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $(B)/liblora_sd.so

$(STATIC): $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

# Tests link the static archive: they reach internal functions the shared library hides. They also link the CLI's
# pure-C parsers, which use no library call.
CLI_PURE_OBJS := $(addprefix $(B)/examples/lora-sd/,extra_networks.o lora_dir.o lora_spec.o)
$(B)/run-tests: $(TEST_OBJS) $(CLI_PURE_OBJS) $(STATIC)
	$(CXX) $(SAN) $(LDFLAGS) -o $@ $(TEST_OBJS) $(CLI_PURE_OBJS) $(STATIC) $(LIBS_ALL)

# c10d (shim/dist.cpp): ProcessGroupGloo.hpp declares nothing without USE_C10D_GLOO (CMake's Torch target sets it);
# Gloo's headers come from libgloo-dev. NCCL=1 adds ProcessGroupNCCL, for a CUDA libtorch built with it.
$(B)/shim/dist.o: CXXFLAGS_ALL += -DUSE_C10D_GLOO $(if $(filter 1,$(NCCL)),-DLSD_WITH_NCCL)

$(CLI_OBJS): CFLAGS_ALL += $(CLI_CFLAGS)

$(B)/lora-sd: $(CLI_OBJS) $(SHARED)
	$(CC) $(SAN) $(LDFLAGS) -o $@ $(CLI_OBJS) -L$(B) -llora_sd -Wl,-rpath,'$$ORIGIN' $(CLI_LIBS) -lm

# The .pc names the prefix, so install writes it afresh for the PREFIX it installs to.
make_pc = sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCLUDEDIR@|$(INCLUDEDIR)|; s|@VERSION@|$(VERSION)|' \
	    -e 's|@LIBS_PRIVATE@|$(PKG_LIBS) $(TORCH_LIBS) -lstdc++ -lpthread -lm -ldl|' pkgconfig/lora_sd.pc.in > $(1)

# DATADIR is compiled in: the object that uses it is rebuilt when it changes (make, then make install PREFIX=...).
$(B)/datadir.stamp: FORCE
	@mkdir -p $(B)
	@echo '$(DATADIR)' | cmp -s - $@ || echo '$(DATADIR)' > $@
$(B)/lib/core/datadir.o: $(B)/datadir.stamp
FORCE:

$(B)/lora_sd.pc: pkgconfig/lora_sd.pc.in
	@mkdir -p $(B)
	$(call make_pc,$@)

# tests/lsan.supp: leaks of other libraries' process-lifetime caches, for the ASan build (ignored otherwise).
check: $(B)/run-tests $(B)/lora-sd
	LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp LSD_DATA_DIR=$(CURDIR)/data LSD_CLI=$(CURDIR)/$(B)/lora-sd \
	    $(B)/run-tests $(TESTS)

# ThreadSanitizer over the tests that use threads (libtorch itself is not instrumented: see tests/tsan.supp).
check-tsan:
	$(MAKE) B=build-tsan SANITIZE=thread build-tsan/run-tests
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp halt_on_error=1" LSD_DATA_DIR=$(CURDIR)/data \
	    build-tsan/run-tests threads handle_errors

# The Python binding (bindings/python, ctypes) against this build's library, its CLI for the reference pixels.
check-python: $(SHARED) $(B)/lora-sd
	LORA_SD_LIBRARY=$(CURDIR)/$(B)/$(SONAME) LORA_SD_CLI=$(CURDIR)/$(B)/lora-sd LSD_DATA_DIR=$(CURDIR)/data \
	    PYTHONPATH=$(CURDIR)/bindings/python PYTHONDONTWRITEBYTECODE=1 \
	    python3 -m unittest discover -s bindings/python/tests -v

# The build tree as a pkg-config package: pkg-config prefers NAME-uninstalled.pc in PKG_CONFIG_PATH, so what finds
# an installed library through pkg-config (the Go binding) finds this build's header and library.
$(B)/lora_sd-uninstalled.pc: PREFIX = $(CURDIR)
$(B)/lora_sd-uninstalled.pc: LIBDIR = $(CURDIR)/$(B)
$(B)/lora_sd-uninstalled.pc: INCLUDEDIR = $(CURDIR)/include
$(B)/lora_sd-uninstalled.pc: pkgconfig/lora_sd.pc.in
	@mkdir -p $(B)
	$(call make_pc,$@)

# The Go binding (bindings/go, cgo) against this build (pkg-config finds the tree), its example built; nothing
# downloaded.
check-go: $(SHARED) $(B)/lora-sd $(B)/lora_sd-uninstalled.pc
	cd bindings/go && PKG_CONFIG_PATH=$(CURDIR)/$(B) CGO_LDFLAGS="-Wl,-rpath,$(CURDIR)/$(B)" \
	    LORA_SD_CLI=$(CURDIR)/$(B)/lora-sd LSD_DATA_DIR=$(CURDIR)/data GOPROXY=off \
	    sh -c 'go vet ./... && go test -count=1 -v ./...'

# The Rust crates (bindings/rust: lora-sd-sys, lora-sd) against this build, offline; cargo's output under $(B).
check-rust: $(SHARED) $(B)/lora-sd
	cd bindings/rust && LORA_SD_LIB_DIR=$(CURDIR)/$(B) LD_LIBRARY_PATH=$(CURDIR)/$(B) \
	    LORA_SD_CLI=$(CURDIR)/$(B)/lora-sd LSD_DATA_DIR=$(CURDIR)/data CARGO_TARGET_DIR=$(CURDIR)/$(B)/rust \
	    cargo test --offline

# Man pages: lora-sd(1) and lora-sd-COMMAND(1), written from the CLI's own help by tools/man.py. `make man`
# rewrites man/; check-man fails when man/ is not what the help says now, or when man(1) warns about a page.
man: $(B)/lora-sd
	python3 tools/man.py $(B)/lora-sd man

check-man: $(B)/lora-sd
	rm -rf $(B)/man && mkdir -p $(B)/man
	python3 tools/man.py $(B)/lora-sd $(B)/man
	diff -r man $(B)/man
	@for f in man/*.1; do \
	    w=$$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z $$f 2>&1 >/dev/null); \
	    test -z "$$w" || { echo "$$f: $$w"; exit 1; }; done

# The API reference: Doxygen (docs/Doxyfile) over include/lora_sd.h's comments, HTML in $(B)/doc/html (index.html).
# Fails on any Doxygen warning but an undocumented item listed in docs/doxygen-undocumented.txt (tools/doc_warnings.py).
doc:
	rm -rf $(B)/doc && mkdir -p $(B)/doc
	LSD_VERSION=$(VERSION) LSD_DOC_DIR=$(B)/doc doxygen docs/Doxyfile
	python3 tools/doc_warnings.py $(B)/doc/warnings.log docs/doxygen-undocumented.txt

# Debian packages (debian/) built from a copy of the committed tree under $(B)/deb, then lintian, which may report
# no error and no warning (overrides carry their reason in debian/*.lintian-overrides).
deb:
	rm -rf $(B)/deb && mkdir -p $(B)/deb/lora-sd-$(VERSION)
	git archive HEAD | tar -x -C $(B)/deb/lora-sd-$(VERSION)
	cd $(B)/deb/lora-sd-$(VERSION) && dpkg-buildpackage -us -uc -b -j2
	lintian --fail-on error,warning $(B)/deb/lora-sd_$(VERSION)_*.changes

# Valgrind memcheck over the pure-C readers, in a runner linked without libtorch: libtorch drags in libhwy (via
# OpenCV and libjxl), whose load-time timer probe is an illegal instruction under valgrind on some CPUs. The link
# fails if one of these tests starts to need the shim, so the list cannot silently shrink to nothing.
VALGRIND_TESTS := safetensors atomic image tokenizer pickle ckpt keymap config hf_cache schedulers data_layouts data_buckets
VALGRIND_OBJS := $(B)/tests/main.o $(B)/tests/util.o $(B)/tests/data_util.o $(VALGRIND_TESTS:%=$(B)/tests/test_%.o)
$(B)/run-tests-c: $(VALGRIND_OBJS) $(STATIC)
	$(CC) $(SAN) $(LDFLAGS) -o $@ $(VALGRIND_OBJS) $(STATIC) $(PKG_LIBS) -lpthread -lm -ldl

check-valgrind: $(B)/run-tests-c
	LSD_DATA_DIR=$(CURDIR)/data valgrind --suppressions=$(CURDIR)/tests/valgrind.supp --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
	    --show-leak-kinds=definite -q $(B)/run-tests-c

# One process per row, so each row's peak RSS is its own (bench/bench.c); the header names the CPU and its bf16.
bench: $(B)/lora-sd $(B)/bench
	LSD_DATA_DIR=$(CURDIR)/data $(B)/bench
	set -e; for r in $$(LSD_DATA_DIR=$(CURDIR)/data $(B)/bench | sed -n 's/^rows: //p'); do \
	    LSD_DATA_DIR=$(CURDIR)/data $(B)/bench $$r; done

$(B)/bench: bench/bench.c $(STATIC)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS) -o $@ $< $(STATIC) $(LIBS_ALL) -lstdc++

install: all
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(DATADIR)
	install -m 644 include/lora_sd.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 644 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf liblora_sd.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/liblora_sd.so
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	$(call make_pc,$(DESTDIR)$(LIBDIR)/pkgconfig/lora_sd.pc)
	install -m 755 $(B)/lora-sd $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(MANDIR)/man1
	install -m 644 man/*.1 $(DESTDIR)$(MANDIR)/man1/
	cp -r data/configs $(DESTDIR)$(DATADIR)/

# Installs into a scratch prefix, then builds and runs examples/hello.c against it with pkg-config alone.
install-check:
	rm -rf $(CURDIR)/$(B)/install-check
	$(MAKE) install PREFIX=$(CURDIR)/$(B)/install-check
	PKG_CONFIG_PATH=$(CURDIR)/$(B)/install-check/lib/pkgconfig sh -c \
	    '$(CC) examples/hello.c $$(pkg-config --cflags --libs lora_sd) -o $(B)/hello'
	test -z "$$(nm -D --defined-only $(B)/install-check/lib/liblora_sd.so.0 | awk '$$3 !~ /^(lsd_|LORA_SD_)/ {print $$3}')"
	LD_LIBRARY_PATH=$(CURDIR)/$(B)/install-check/lib $(B)/hello tests/data/sd-tiny
	@# The header needs no other package (--cflags is the include dir alone); --static names the C++ runtime; the
	@# library is 0644 and was built for this PREFIX (its DATADIR compiled in) although `make` built it first.
	test "$$(echo $$(PKG_CONFIG_PATH=$(CURDIR)/$(B)/install-check/lib/pkgconfig pkg-config --cflags lora_sd))" = \
	    "-I$(CURDIR)/$(B)/install-check/include"
	PKG_CONFIG_PATH=$(CURDIR)/$(B)/install-check/lib/pkgconfig pkg-config --static --libs lora_sd | grep -q -- -lstdc++
	test "$$(stat -c %a $(B)/install-check/lib/liblora_sd.so.$(VERSION))" = 644
	grep -q '$(CURDIR)/$(B)/install-check/share/lora_sd' $(B)/install-check/lib/liblora_sd.so.$(VERSION)
	@# A multiarch libdir, then the whole prefix moved: the library finds the configs from its own place
	@# (<libdir>/../../share/lora_sd), as the single-file loader shows by reaching the weights' shapes.
	rm -rf $(CURDIR)/$(B)/install-multiarch $(CURDIR)/$(B)/install-moved
	$(MAKE) install PREFIX=$(CURDIR)/$(B)/install-multiarch LIBDIR=$(CURDIR)/$(B)/install-multiarch/lib/x86_64-linux-gnu
	mv $(B)/install-multiarch $(B)/install-moved
	LD_LIBRARY_PATH=$(CURDIR)/$(B)/install-moved/lib/x86_64-linux-gnu LSD_DATA_DIR= $(B)/install-moved/bin/lora-sd \
	    generate --model tests/data/sd-tiny-sf/single-file/model.safetensors --steps 1 --output /dev/null 2>&1 | \
	    grep -q 'text_encoder: 112 missing, 84 mis-shaped'
	rm -rf $(CURDIR)/$(B)/install-moved

# Layout guard (abigail-tools): the public functions and types of this build against abi/lora_sd.abi, this release's
# baseline; abi/lora_sd.abignore allows only fields appended to growable structs, and check-suppressions.sh first
# proves that it does. `make abi-baseline` rewrites the baseline, at a release.
ABIDW := abidw --headers-dir include --drop-private-types --exported-interfaces-only --no-show-locs \
    --no-comp-dir-path --no-corpus-path
abi-diff: $(SHARED)
	abi/check-suppressions.sh $(B)/abi-suppressions
	$(ABIDW) $(SHARED) > $(B)/lora_sd.abi
	abidiff --suppressions abi/lora_sd.abignore --no-added-syms abi/lora_sd.abi $(B)/lora_sd.abi

abi-baseline: $(SHARED)
	$(ABIDW) $(SHARED) > abi/lora_sd.abi

# ABI guard: no symbol listed in abi/symbols.txt (the soname's promise) may disappear; new ones are reported so the
# list can be extended in the same change. Struct layouts and enum numbers are pinned by tests/test_abi.c.
abi-check: $(SHARED)
	@nm -D --defined-only $(SHARED) | awk '$$3 ~ /^lsd_/ {print $$3}' | sort > $(B)/symbols.txt
	@removed=$$(comm -23 abi/symbols.txt $(B)/symbols.txt); added=$$(comm -13 abi/symbols.txt $(B)/symbols.txt); \
	test -z "$$added" || echo "abi-check: new symbols (add them to abi/symbols.txt): $$added"; \
	test -z "$$removed" || { echo "abi-check: symbols removed from liblora_sd.so.0: $$removed"; exit 1; }; \
	echo "abi-check: $$(wc -l < abi/symbols.txt) symbols kept"

clean:
	rm -rf $(B)

# Fuzzing (libFuzzer, clang): one binary per reader; the readers are pure C, so no libtorch here.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 30
FUZZ_B := $(B)/fuzz
# fuzz_lora needs the model, so libtorch: it links the whole library (C sources instrumented, the shim's objects
# from the normal build uninstrumented, like libtorch itself).
FUZZ_TORCH_TARGETS := fuzz_lora
FUZZ_TARGETS := $(filter-out $(FUZZ_TORCH_TARGETS),$(basename $(notdir $(wildcard tests/fuzz/fuzz_*.c))))
FUZZ_LIB_SRCS := lib/core/error.c lib/core/log.c lib/core/struct_size.c $(wildcard lib/io/*.c lib/text/*.c) lib/model/config.c
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iinclude -Ilib -Ishim $(PKG_CFLAGS)

# The dataset's readers (layouts, captions, header probes) and the latent cache file are pure C as well.
FUZZ_DATA_SRCS := $(filter-out $(addprefix lib/data/,class_images.c latent_cache.c latents.c text_cache.c), \
    $(wildcard lib/data/*.c))
$(FUZZ_B)/fuzz_dataset $(FUZZ_B)/fuzz_latent_file: FUZZ_EXTRA := $(FUZZ_DATA_SRCS)

$(FUZZ_B)/%: tests/fuzz/%.c $(FUZZ_LIB_SRCS) $(FUZZ_DATA_SRCS)
	@mkdir -p $(FUZZ_B)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_LIB_SRCS) $(FUZZ_EXTRA) $(PKG_LIBS) -lm -lpthread

$(FUZZ_B)/fuzz_lora: tests/fuzz/fuzz_lora.c $(LIB_SRCS) $(SHIM_SRCS:%.cpp=$(B)/%.o)
	@mkdir -p $(FUZZ_B)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(LIB_SRCS) $(SHIM_SRCS:%.cpp=$(B)/%.o) $(PKG_LIBS) $(TORCH_LIBS) \
	    -lstdc++ -lm -lpthread -ldl

fuzz-build: $(addprefix $(FUZZ_B)/,$(FUZZ_TARGETS) $(FUZZ_TORCH_TARGETS))

# Each target runs FUZZ_SECONDS on a corpus seeded from the test data (and tests/fuzz/<target>.dict when there is
# one); crashes land in $(FUZZ_B)/artifacts.
fuzz: fuzz-build
	@mkdir -p $(FUZZ_B)/artifacts
	@for t in $(FUZZ_TARGETS) $(FUZZ_TORCH_TARGETS); do \
	    tests/fuzz/seed.sh $$t $(FUZZ_B)/corpus/$$t || exit 1; \
	    echo "== $$t"; \
	    dict=; test -f tests/fuzz/$$t.dict && dict=-dict=tests/fuzz/$$t.dict; \
	    $(FUZZ_B)/$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 $$dict \
	        -artifact_prefix=$(FUZZ_B)/artifacts/$$t- $(FUZZ_B)/corpus/$$t >$(FUZZ_B)/$$t.log 2>&1; \
	    rc=$$?; grep -E "^(stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|Done)" $(FUZZ_B)/$$t.log; \
	    test $$rc -eq 0 || { tail -40 $(FUZZ_B)/$$t.log; exit 1; }; \
	done

.PHONY: FORCE all deb doc man check check-man check-python check-go check-rust check-tsan check-valgrind bench install install-check abi-check abi-diff abi-baseline clean fuzz fuzz-build
-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(CLI_OBJS:.o=.d)
