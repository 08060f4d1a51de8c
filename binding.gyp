{
  "targets": [
    {
      "target_name": "volagent",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/file-ops.cc",
        "native/block-ops.cc",
        "native/dm-ioctl.cc",
        "native/loop-ops.cc",
        "native/service-ops.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": []
    }
  ]
}
