# Source this to run cargo by hand with the same environment the Makefile uses
# (a different environment makes torch-sys rebuild its C++ wrapper).
export LBWNET_TORCH_ENV="${LBWNET_TORCH_ENV:-$HOME/.cache/lbwnet/torch-2.11.0}"
export LIBTORCH_USE_PYTORCH=1
export PATH="$LBWNET_TORCH_ENV/bin:$PATH"
unset LIBTORCH
