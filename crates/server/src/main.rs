//! `roomcast`: see `roomcast --help`.

fn main() -> std::process::ExitCode {
    roomcast_server::cli::main()
}
