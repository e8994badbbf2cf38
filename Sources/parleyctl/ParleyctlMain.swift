import ArgumentParser
import ParleyAdmin

/// The entry point. Inside an async function (unlike top-level code) overload resolution
/// picks ArgumentParser's async `main()`, which runs the subcommands' async `run()`.
@main
struct ParleyctlMain {
    static func main() async {
        await Parleyctl.main()
    }
}
