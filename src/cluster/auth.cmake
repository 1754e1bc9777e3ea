# Authentication of TCP connections (leaf module: libcrypto, no daemon
# code): token files, nonces, HMAC-SHA256 proofs. Linked into the worker and
# the client library (auth.c is in src/client/sources.txt).
pkg_check_modules(CRYPTO REQUIRED IMPORTED_TARGET libcrypto)
kvds_module(kvds_auth CLIENT "^src/cluster/auth\\.c$"
            LIBS kvds_common PkgConfig::CRYPTO)
