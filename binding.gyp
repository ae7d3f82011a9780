{
  "targets": [
    {
      "target_name": "fileops",
      "sources": ["native/fileops.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "digests",
      "sources": ["native/digests.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
