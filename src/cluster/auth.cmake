# Authentication of TCP connections (leaf module: libcrypto, no daemon
# code): token files, nonces, HMAC-SHA256 proofs. Linked into the worker and
# the client library.
pkg_check_modules(CRYPTO REQUIRED IMPORTED_TARGET libcrypto)
add_library(kvds_auth STATIC src/cluster/auth.c)
target_link_libraries(kvds_auth PUBLIC kvds_common PkgConfig::CRYPTO)
