import ParleyAdmin

await Parleyctl.main()
