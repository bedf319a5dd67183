//! `evalfleet`: the coordinator binary; everything lives in the library ([`evalfleet::cli`]).

fn main() -> std::process::ExitCode {
    evalfleet::cli::main()
}
