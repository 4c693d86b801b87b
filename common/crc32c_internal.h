/* crc32c_internal.h -- CRC-32C (Castagnoli), the checksum of every section
 * of kiln's files; SSE4.2 instruction where the CPU has it, a table
 * otherwise, both giving the same value. */
#ifndef KILN_CRC32C_INTERNAL_H
#define KILN_CRC32C_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc over buf; start with crc = 0. */
uint32_t kiln_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t kiln_crc32c_scalar(uint32_t crc, const void *buf, size_t len);

#endif /* KILN_CRC32C_INTERNAL_H */
