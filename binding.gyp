{
  "targets": [
    {
      "target_name": "fileops",
      "sources": [
        "native/fileops.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra"
      ]
    },
    {
      "target_name": "digests",
      "sources": [
        "native/digests.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra"
      ]
    },
    {
      "target_name": "treewriter",
      "sources": [
        "native/tree-writer.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra"
      ]
    },
    {
      "target_name": "blockdevices",
      "sources": [
        "native/block-devices.c"
      ],
      "cflags": [
        "-O2",
        "-Wall",
        "-Wextra"
      ]
    }
  ]
}
