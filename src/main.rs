fn main() -> std::process::ExitCode {
    vamsa_migrate::cli::main()
}
