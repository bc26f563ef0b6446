# Builds the `appsignal_ext` C extension against libappsignal.
#
#   APPSIGNAL_INCLUDE=/path/to/dir/of/appsignal.h APPSIGNAL_LIB_DIR=/path/to/dir/of/libappsignal.so \
#     ruby extconf.rb && make
#
# The library directory is also written into the extension as an rpath, so that libappsignal.so is
# found at run time without LD_LIBRARY_PATH.
require "mkmf"

include_dir = ENV.fetch("APPSIGNAL_INCLUDE") { File.expand_path("../../../..", __dir__) }
lib_dir = ENV.fetch("APPSIGNAL_LIB_DIR") { abort "APPSIGNAL_LIB_DIR (the directory of libappsignal.so) is not set" }
include_dir = File.expand_path(include_dir)
lib_dir = File.expand_path(lib_dir)

dir_config("appsignal", include_dir, lib_dir)

find_header("appsignal.h", include_dir) or
  abort "appsignal.h not found in #{include_dir} (set APPSIGNAL_INCLUDE)"
# Checks both that the library links and that it has the function.
have_library("appsignal", "appsignal_start", "appsignal.h") or
  abort "libappsignal not found in #{lib_dir} (set APPSIGNAL_LIB_DIR)"
have_header("ruby/thread.h") or abort "ruby/thread.h missing (ruby-dev too old?)"

$LDFLAGS << " -Wl,-rpath,#{lib_dir}"
# Strict warnings for our own file only: added after the checks above, whose probe programs are not
# written to be warning-free.
$CFLAGS << " -Wall -Wextra -Werror"
# Ruby's own headers are not -Wextra clean (unused parameters in inline functions): mark them as
# system headers, which silences warnings *in them* only (GCC ignores the -I of a directory that is
# also given with -isystem).
ruby_headers = [RbConfig::CONFIG["rubyarchhdrdir"], RbConfig::CONFIG["rubyhdrdir"]].compact
$CPPFLAGS = (ruby_headers.map { |d| "-isystem #{d}" } + [$CPPFLAGS]).join(" ")

create_makefile("appsignal_ext")
