"""Operator categories (bench.profiling.opcats): aten op names, and real kernel names taken from
PyTorch profiler traces on NVIDIA GPUs (H100/A100: cuBLAS, cuBLASLt, cuDNN, flash attention,
PyTorch's native kernels) and from Inductor's generated Triton code. The names are plain strings:
classifying them needs no GPU."""

from __future__ import annotations

import pytest

from bench.profiling.opcats import classify

ATEN = [
    ("aten::convolution", "convolution"),
    ("aten::mkldnn_convolution", "convolution"),
    ("aten::convolution_backward", "convolution"),
    ("aten::addmm", "matmul"),
    ("aten::mm", "matmul"),
    ("aten::linear", "matmul"),
    ("aten::bmm", "matmul"),
    ("aten::scaled_dot_product_attention", "attention"),
    ("aten::_scaled_dot_product_flash_attention", "attention"),
    ("aten::_scaled_dot_product_efficient_attention_backward", "attention"),
    ("aten::softmax", "attention"),
    ("aten::layer_norm", "normalization"),
    ("aten::native_layer_norm_backward", "normalization"),
    ("aten::batch_norm", "normalization"),
    ("aten::_native_batch_norm_legit_no_training", "normalization"),
    ("aten::gelu", "elementwise"),
    ("aten::relu_", "elementwise"),
    ("aten::add", "elementwise"),
    ("aten::add_", "elementwise"),
    ("aten::threshold_backward", "elementwise"),
    ("aten::copy_", "memory"),
    ("aten::contiguous", "memory"),
    ("aten::permute", "memory"),
    ("aten::clone", "memory"),
    ("aten::_to_copy", "memory"),
    ("aten::max_pool2d_with_indices", "other"),
    ("aten::_log_softmax", "other"),
]

CUDA_KERNELS = [
    # convolution: cuDNN implicit GEMM (sm90 = H100), direct, Winograd and CUTLASS-in-cuDNN kernels
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1"
     "_g1_execute_segment_k_off_kernel__5x_cudnn", "convolution"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution"),
    ("sm80_xmma_wgrad_implicit_gemm_indexed_tf32f32_tf32f32_f32_nhwckrsc_nchw", "convolution"),
    ("void cudnn::cnn::conv2d_grouped_direct_kernel<false, true, float, float>", "convolution"),
    ("void implicit_convolve_sgemm<__half, __half, 1024, 5, 5, 3, 3, 3, 1, false, false, true>", "convolution"),
    ("_5x_cudnn_ampere_scudnn_winograd_128x128_ldg1_ldg4_relu_tile148t_nt_v1", "convolution"),
    ("cutlass__5x_cudnn::Kernel<cutlass__5x_cudnn::conv::kernel::ImplicitGemmConvolution<>>", "convolution"),
    # matmul: cuBLAS / cuBLASLt (nvjet is cuBLAS 12's H100 GEMM), CUTLASS, and split-K's reduction
    ("ampere_sgemm_128x64_tn", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matmul"),
    ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8", "matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", "matmul"),
    ("nvjet_tst_64x8_64x16_1x4_h_bz_splitK_bias_TNT", "matmul"),
    ("splitKreduce_kernel", "matmul"),
    ("void splitKreduce_kernel<float, float, float, float>(cublasSplitKParams<float>, float const*, "
     "float const*, float*, float const*, float const*, float const*)", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, "
     "false>(cublasLt::cublasSplitKParams<float>, __nv_bfloat16 const*, __nv_bfloat16*)", "matmul"),
    ("gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4, false, false>", "matmul"),
    # attention: flash (PyTorch's copy), memory-efficient (CUTLASS fmha), cuDNN SDPA, softmax
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>, false>", "attention"),
    ("void pytorch_flash::flash_bwd_convert_dq_kernel<Flash_bwd_kernel_traits<64, 128, 128, 8>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<>::Params)", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0", "attention"),
    ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 6, false, false, 32>", "attention"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
     "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>", "attention"),
    # normalization: PyTorch's layer norm forward and backward, cuDNN and native batch norm
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>", "normalization"),
    ("void at::native::(anonymous namespace)::cuComputeGradInput<float, float>", "normalization"),
    ("void at::native::(anonymous namespace)::cuComputePartGradGammaBeta<float, float>", "normalization"),
    ("void at::native::(anonymous namespace)::layer_norm_grad_input_kernel_vectorized<c10::BFloat16, float>",
     "normalization"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>", "normalization"),
    ("void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 512, true, 1>", "normalization"),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<at::native::Var, float, float, 4>",
     "normalization"),
    # elementwise: PyTorch's TensorIterator kernels and the fused optimizer
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
     "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3>)",
     "elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::AUnaryFunctor<float, float, float, "
     "at::native::binary_internal::MulFunctor<float> > >", "elementwise"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>", "elementwise"),
    # memory: copies, cuDNN layout transforms, cat, fills, transfers
    ("Memcpy HtoD (Pageable -> Device)", "memory"),
    ("Memset (Device)", "memory"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true>", "memory"),
    ("void cudnn::ops::nhwcToNchwKernel<__half, __half, float, false, true, (cudnnKernelDataType_t)0>", "memory"),
    ("void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda>", "memory"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
     "::{lambda()#3}>", "memory"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_contig<at::native::(anonymous namespace)::"
     "OpaqueType<2u>, unsigned int, 4, 64, 64>", "memory"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
     "at::detail::Array<char*, 1> >", "memory"),
    # other: reductions, pooling, the loss
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps>>", "other"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nhwc<float, float>", "other"),
    ("cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>", "other"),
    ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>", "other"),
    ("something_unheard_of", "other"),
]

# Inductor Triton kernels, named after the aten ops fused into them.
TRITON_KERNELS = [
    ("triton_red_fused__to_copy_native_layer_norm_2", "normalization"),
    ("triton_per_fused__to_copy_add_native_layer_norm_5", "normalization"),
    ("triton_red_fused__to_copy_native_layer_norm_native_layer_norm_backward_20", "normalization"),
    ("triton_red_fused__native_batch_norm_legit_functional_relu_3", "normalization"),
    ("triton_per_fused__softmax_clone_6", "attention"),
    ("triton_per_fused__softmax_backward_data_add_div_mul_neg_rsub_sigmoid_sum_25", "attention"),
    ("triton_per_fused__log_softmax_nll_loss_forward_0", "other"),
    ("triton_red_fused_convolution_backward_sum_4", "other"),
    ("triton_per_fused_mean_1", "other"),
    ("triton_poi_fused_max_pool2d_with_indices_1", "other"),
    ("triton_poi_fused__to_copy_add_gelu_3", "elementwise"),
    ("triton_poi_fused_convolution_relu_0", "elementwise"),  # the conv's bias + ReLU epilogue
    ("triton_poi_fused_addmm_gelu_view_2", "elementwise"),
    ("triton_poi_fused_0", "elementwise"),
    ("triton_poi_fused__to_copy_0", "memory"),
    ("triton_poi_fused_cat_clone_permute_1", "memory"),
    ("triton_poi_fused__to_copy_t_view_7", "memory"),
    ("triton_tem_fused_addmm_gelu_0", "matmul"),
    ("triton_tem_fused_mm_3", "matmul"),
    ("triton_tem_fused_convolution_relu_1", "convolution"),
]


@pytest.mark.parametrize(("name", "category"), ATEN + CUDA_KERNELS + TRITON_KERNELS)
def test_classify(name: str, category: str) -> None:
    assert classify(name) == category
