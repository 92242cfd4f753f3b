//! The `velro-authz` command; the command line lives in `app::cli`.

/// mimalloc instead of glibc's malloc: the request path allocates many
/// small, short-lived buffers from several threads (malloc and free were
/// ~14 % of a profile); hot Authorize under h2load went from 28,800 to
/// 35,600 req/s (`ghz_bench/h2load.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    velro_authz::app::cli::main()
}
