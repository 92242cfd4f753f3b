//! The `velro-authz` command; the command line lives in `app::cli`.

fn main() -> std::process::ExitCode {
    velro_authz::app::cli::main()
}
