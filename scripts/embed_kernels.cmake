# Turns each OpenCL source in SOURCES into a NUL-terminated byte array in OUT,
# plus a table kiln_kernel_sources[] of {name, text} ended by {NULL, NULL}.
# Runs at build time (add_custom_command), so edited kernels are re-embedded.
set(body "/* Generated from the kernels folder by scripts/embed_kernels.cmake. Do not edit. */\n")
string(APPEND body "#include <stddef.h>\n")
set(table "")
foreach(src ${SOURCES})
  get_filename_component(name ${src} NAME)
  string(MAKE_C_IDENTIFIER ${name} ident)
  file(READ ${src} hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  string(APPEND body "static const char kiln_src_${ident}[] = {${hex}0x00};\n")
  string(APPEND table "    {\"${name}\", kiln_src_${ident}},\n")
endforeach()
string(APPEND body "struct kiln_kernel_source { const char *name; const char *text; };\n")
string(APPEND body "extern const struct kiln_kernel_source kiln_kernel_sources[];\n")
string(APPEND body "const struct kiln_kernel_source kiln_kernel_sources[] = {\n${table}    {NULL, NULL}};\n")
file(WRITE ${OUT}.tmp "${body}")
file(RENAME ${OUT}.tmp ${OUT})
