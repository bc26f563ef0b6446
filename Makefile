# Installs libappsignal like any C library (see the README, "Installing the C library"):
#
#   make install [PREFIX=/usr/local] [DESTDIR=]        # builds the release library first
#   make install-files BUILD_DIR=target/release       # installs a library built before, runs no cargo
#   make uninstall [PREFIX=…] [DESTDIR=…]
#
# Builds the release archives for every platform (see the README, "Platforms and release archives"):
#
#   make dist-deps                                     # rustup targets, Zig, cargo-zigbuild, qemu-user
#   make dist [DIST_TARGETS="x86_64-unknown-linux-gnu …"]   # dist/libappsignal-<version>-<target>.tar.gz, dist/SHA256SUMS
#
# Builds the previous release's library, which tests/upgrade.rs runs next to this one (a rolling deploy):
#
#   make previous                                      # target/previous/libappsignal.so (scripts/previous.sh)
#
# Installs, under $(DESTDIR):
#   $(LIBDIR)/libappsignal.so.$(VERSION)        soname libappsignal.so.$(MAJOR) (ffi/build.rs)
#   $(LIBDIR)/libappsignal.so.$(MAJOR)  -> libappsignal.so.$(VERSION)
#   $(LIBDIR)/libappsignal.so           -> libappsignal.so.$(MAJOR)
#   $(LIBDIR)/libappsignal.a
#   $(INCLUDEDIR)/appsignal.h
#   $(PKGCONFIGDIR)/appsignal.pc                for pkg-config --cflags --libs appsignal
#
# The build is the shipped one: `cargo build --release -p appsignal-ffi`, without the test knobs.

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))

PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
CARGO ?= cargo
CARGO_TARGET_DIR ?= $(ROOT)/target
BUILD_DIR ?= $(CARGO_TARGET_DIR)/release
INSTALL ?= install

# The workspace version ([workspace.package] comes first in Cargo.toml).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(ROOT)/Cargo.toml | head -n 1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))

.PHONY: all build install install-files uninstall dist dist-deps previous

all: build

build:
	cd $(ROOT) && CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) $(CARGO) build --release -p appsignal-ffi

install: build
	$(MAKE) -f $(ROOT)/Makefile install-files BUILD_DIR=$(CARGO_TARGET_DIR)/release

install-files:
	@test -n "$(VERSION)" || { echo "no version in $(ROOT)/Cargo.toml" >&2; exit 1; }
	@test -f $(BUILD_DIR)/libappsignal.so || { echo "no $(BUILD_DIR)/libappsignal.so: run make install (or cargo build --release -p appsignal-ffi)" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	$(INSTALL) -m 755 $(BUILD_DIR)/libappsignal.so $(DESTDIR)$(LIBDIR)/libappsignal.so.$(VERSION)
	ln -sfn libappsignal.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libappsignal.so.$(MAJOR)
	ln -sfn libappsignal.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libappsignal.so
	$(INSTALL) -m 644 $(BUILD_DIR)/libappsignal.a $(DESTDIR)$(LIBDIR)/libappsignal.a
	$(INSTALL) -m 644 $(ROOT)/appsignal.h $(DESTDIR)$(INCLUDEDIR)/appsignal.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
	    -e 's|@VERSION@|$(VERSION)|g' $(ROOT)/ffi/appsignal.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/appsignal.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/appsignal.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libappsignal.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libappsignal.so.$(MAJOR) \
	    $(DESTDIR)$(LIBDIR)/libappsignal.so $(DESTDIR)$(LIBDIR)/libappsignal.a \
	    $(DESTDIR)$(INCLUDEDIR)/appsignal.h $(DESTDIR)$(PKGCONFIGDIR)/appsignal.pc

dist-deps:
	bash $(ROOT)/scripts/dist/deps.sh

dist:
	bash $(ROOT)/scripts/dist/build.sh $(DIST_TARGETS)

previous:
	bash $(ROOT)/scripts/previous.sh
