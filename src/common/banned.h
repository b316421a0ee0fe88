/*
 * Functions banned from paddock's own code (STYLE R-51): unbounded copies, non-reentrant
 * tokenizers, unchecked number parsing and the shell. Use snprintf, struct buf and
 * util_parse_u64 instead. The libc headers that declare them come first so that the
 * declarations themselves are not poisoned.
 */
#ifndef PADDOCK_BANNED_H
#define PADDOCK_BANNED_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC poison sprintf vsprintf strcpy strcat strncpy strtok gets atoi atol system

#endif
