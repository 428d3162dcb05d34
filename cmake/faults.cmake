# Fault injection (src/fault/fault.h says what it does). Included by CMakeLists.txt once
# the library's object target pier_objs exists; PIER_FAULTS is its option.
#
# On: every library object gets fault.h force-included, which turns the allocations and
# system calls into the wrappers of src/fault/fault.c; that file itself is compiled
# without the macros, so its wrappers call the real functions.
# Off: src/fault/ is taken out of the library altogether, so the library is byte for
# byte what it would be without the module.
if(PIER_FAULTS)
  target_compile_definitions(pier_objs PRIVATE PIER_FAULTS=1)
  target_compile_options(pier_objs PRIVATE -include ${CMAKE_SOURCE_DIR}/src/fault/fault.h)
  set_source_files_properties(${CMAKE_SOURCE_DIR}/src/fault/fault.c PROPERTIES COMPILE_DEFINITIONS PIER_FAULT_IMPL=1)
else()
  get_target_property(pier_fault_srcs pier_objs SOURCES)
  list(FILTER pier_fault_srcs EXCLUDE REGEX "/src/fault/")
  set_property(TARGET pier_objs PROPERTY SOURCES ${pier_fault_srcs})
endif()
