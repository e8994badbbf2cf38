import ArgumentParser
import ParleyBench

/// The entry point; inside an async function ArgumentParser's async `main()` is the one chosen.
@main
struct BenchMain {
    static func main() async {
        await BenchCommand.main()
    }
}
