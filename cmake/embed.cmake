# Turns a file into a C source that defines `const unsigned char NAME[]` and
# `const unsigned long NAME_len`, so the pier binary carries its pages (the admin's status
# page) and serves them wherever it is installed.
#   cmake -DIN=www/status.html -DOUT=status_html.c -DNAME=pier_status_html -P embed.cmake
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* generated from ${IN} by cmake/embed.cmake */\n"
     "const unsigned char ${NAME}[] = {\n${body}0};\n"
     "const unsigned long ${NAME}_len = ${len};\n")
