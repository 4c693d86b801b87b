#include <stdio.h>
#include "kiln.h"
int main(void) { printf("%s\n", kiln_version_string()); return 0; }
