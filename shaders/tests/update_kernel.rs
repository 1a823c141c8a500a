//! The update kernel alone against a CPU reference written from its definition: one dispatch of
//! many entries, in log order, bit for bit. An earlier kernel, indexing the block's words with an
//! expression of the parameter index, went wrong on lavapipe (Mesa 22.3) past ~100 entries.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shaders::{UpdateEntry, UpdateParams, dispatch_size, key_words, update_source};
use wgpu::util::DeviceExt;

fn reference(theta: &mut [f32], entries: &[([u8; 32], f32)]) {
    for (seed, c) in entries {
        let mut rng = ChaCha8Rng::from_seed(*seed);
        let mut word = 0;
        for (i, v) in theta.iter_mut().enumerate() {
            if i % 32 == 0 {
                word = rng.next_u32();
            }
            let step = if (word >> (i % 32)) & 1 == 1 { *c } else { -*c };
            let sum = *v + step;
            *v = if sum.abs() < f32::MIN_POSITIVE {
                0.0
            } else {
                sum
            };
        }
    }
}

fn run_update(theta: &[f32], entries: &[([u8; 32], f32)]) -> Vec<f32> {
    pollster::block_on(async {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .expect("no Vulkan adapter: install Mesa's lavapipe (mesa-vulkan-drivers)");
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor::default())
            .await
            .expect("device");
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(update_source().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let init = |label, contents: &[u8], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let theta_buf = init(
            "theta",
            bytemuck::cast_slice(theta),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let list: Vec<UpdateEntry> = entries
            .iter()
            .map(|(seed, c)| UpdateEntry {
                key: key_words(seed),
                c: *c,
                _pad: [0; 3],
            })
            .collect();
        let entries_buf = init(
            "entries",
            bytemuck::cast_slice(&list),
            wgpu::BufferUsages::STORAGE,
        );
        let params = UpdateParams {
            d: theta.len() as u32,
            entries: list.len() as u32,
            _pad: [0; 2],
        };
        let params_buf = init(
            "params",
            bytemuck::bytes_of(&params),
            wgpu::BufferUsages::STORAGE,
        );
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: theta_buf.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: theta_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: entries_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: params_buf.as_entire_binding(),
                },
            ],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            let (x, y) = dispatch_size(theta.len() as u32);
            pass.dispatch_workgroups(x, y, 1);
        }
        encoder.copy_buffer_to_buffer(&theta_buf, 0, &staging, 0, theta_buf.size());
        queue.submit([encoder.finish()]);
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        let view = staging.slice(..).get_mapped_range().expect("mapped");
        bytemuck::cast_slice(&view).to_vec()
    })
}

fn check(d: usize, n: usize) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(d as u64 * 1_000 + n as u64);
    let theta: Vec<f32> = (0..d)
        .map(|_| (rng.next_u32() >> 8) as f32 / (1 << 23) as f32 - 1.0)
        .collect();
    let entries: Vec<([u8; 32], f32)> = (0..n)
        .map(|_| {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            (
                seed,
                ((rng.next_u32() >> 8) as f32 / (1 << 24) as f32 - 0.5) * 1e-3,
            )
        })
        .collect();
    let mut want = theta.clone();
    reference(&mut want, &entries);
    let got = run_update(&theta, &entries);
    let diffs = (0..d)
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .count();
    if diffs == 0 {
        Ok(())
    } else {
        Err(format!("d={d} entries={n}: {diffs} parameters differ"))
    }
}

#[test]
fn update_kernel_matches_cpu_reference() {
    for (d, n) in [
        (1_218, 1),
        (1_218, 128),
        (1_218, 129),
        (1_218, 256),
        (70_000, 17),
    ] {
        check(d, n).unwrap();
    }
}
