//! egressd's entry point: everything lives in the library (`egressd::cli`).

fn main() -> std::process::ExitCode {
    egressd::cli::main()
}
