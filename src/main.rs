fn main() {
    std::process::exit(shrink_cli::main());
}
